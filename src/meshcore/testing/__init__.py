"""meshcore's test kit, for meshcore's own tests and for anyone building on it.

- `strategies`: hypothesis strategies for every wire message, and mutators of valid
  encodings for fuzzing decoders (`mutated_encodings(values, encoder)` works for any codec).
- `memory_transport_pair`: two connected in-memory Transports with a hook (`MessageFilter`)
  for the middle; `LossyNetwork` is a middle that loses, duplicates and reorders frames.
- `open_session_pair`: two live Sessions over such a pair, the real handshake included.
- `SessionCoreMachine`, `SessionPathsMachine`, `SessionRelaysMachine`: the stateful
  machines meshcore's own properties run, to subclass.

Every name loads on first use: importing this package imports neither hypothesis nor trio.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from meshcore.testing import strategies
    from meshcore.testing.machines import (
        SessionCoreMachine,
        SessionPathsMachine,
        SessionRelaysMachine,
    )
    from meshcore.testing.memory import (
        Direction,
        LossyNetwork,
        MemoryTransport,
        MessageFilter,
        memory_transport_pair,
    )
    from meshcore.testing.sessions import open_session_pair

_LAZY = {
    "Direction": "meshcore.testing.memory",
    "LossyNetwork": "meshcore.testing.memory",
    "MemoryTransport": "meshcore.testing.memory",
    "MessageFilter": "meshcore.testing.memory",
    "SessionCoreMachine": "meshcore.testing.machines",
    "SessionPathsMachine": "meshcore.testing.machines",
    "SessionRelaysMachine": "meshcore.testing.machines",
    "memory_transport_pair": "meshcore.testing.memory",
    "open_session_pair": "meshcore.testing.sessions",
}


def __getattr__(name: str) -> object:
    if name == "strategies":
        return importlib.import_module("meshcore.testing.strategies")
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'meshcore.testing' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "Direction",
    "LossyNetwork",
    "MemoryTransport",
    "MessageFilter",
    "SessionCoreMachine",
    "SessionPathsMachine",
    "SessionRelaysMachine",
    "memory_transport_pair",
    "open_session_pair",
    "strategies",
]
