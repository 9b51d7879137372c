"""Sans-IO protocol cores of meshcore: bytes and `now` in, events and bytes out.

Nothing in this package imports trio, sockets or pyroute2; a test checks that.
"""
