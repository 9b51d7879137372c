"""meshcore: post-quantum, peer-to-peer encrypted sessions that meet through a relay.

The relay is a matchmaker, not a middleman: peers authenticate each other end to end with a
hybrid X25519 + ML-KEM-768 handshake, then move their session onto a direct path.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from meshcore.errors import (
    AuthenticationError,
    ConfigError,
    DecodeError,
    HandshakeError,
    MeshError,
    NoUsablePath,
    ProtocolError,
    RelayError,
    ReplayError,
    SessionClosed,
    TransportClosed,
)
from meshcore.proto.identity import Identity, PeerId, PublicBundle
from meshcore.proto.paths import DirectMode, PathSettings
from meshcore.proto.session import SessionSettings

if TYPE_CHECKING:
    from meshcore._api import connect, serve
    from meshcore._session import Session, SessionStatus
    from meshcore._transport import Transport

__version__ = "0.1.0"

# The trio-based parts load on first use, so that `import meshcore.proto` (the sans-IO
# cores) never imports trio or sockets.
_LAZY = {
    "connect": "meshcore._api",
    "serve": "meshcore._api",
    "Session": "meshcore._session",
    "SessionStatus": "meshcore._session",
    "Transport": "meshcore._transport",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'meshcore' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value

__all__ = [
    "AuthenticationError",
    "ConfigError",
    "DecodeError",
    "DirectMode",
    "HandshakeError",
    "Identity",
    "MeshError",
    "NoUsablePath",
    "PathSettings",
    "PeerId",
    "ProtocolError",
    "PublicBundle",
    "RelayError",
    "ReplayError",
    "Session",
    "SessionClosed",
    "SessionSettings",
    "SessionStatus",
    "Transport",
    "TransportClosed",
    "__version__",
    "connect",
    "serve",
]
