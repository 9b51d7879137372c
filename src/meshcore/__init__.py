"""meshcore: post-quantum, peer-to-peer encrypted sessions that meet through a relay.

The relay is a matchmaker, not a middleman: peers authenticate each other end to end with a
hybrid X25519 + ML-KEM-768 handshake, then move their session onto a direct path.
"""

from __future__ import annotations

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

__version__ = "0.1.0"

__all__ = [
    "AuthenticationError",
    "ConfigError",
    "DecodeError",
    "HandshakeError",
    "MeshError",
    "NoUsablePath",
    "ProtocolError",
    "RelayError",
    "ReplayError",
    "SessionClosed",
    "TransportClosed",
    "__version__",
]
