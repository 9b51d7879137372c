"""meshcore's test kit, for meshcore's own tests and for anyone building on it.

`meshcore.testing._wire_strategies` holds hypothesis strategies for every wire message and a
mutator of valid encodings for fuzzing. Nothing here is imported by the library itself, and
importing this package does not import hypothesis.
"""
