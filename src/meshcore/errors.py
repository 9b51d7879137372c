"""The meshcore error hierarchy: every error the library raises derives from `MeshError`.

Each class says whose fault it was (the network's bytes, a failed authentication, the
user's configuration, a closed session) so that callers can decide what to do next.
"""

from __future__ import annotations

__all__ = [
    "AuthenticationError",
    "ConfigError",
    "DecodeError",
    "FrameTooLarge",
    "HandshakeError",
    "KeyExpired",
    "MeshError",
    "NoUsablePath",
    "ProtocolError",
    "RegistryError",
    "RelayError",
    "ReplayError",
    "SessionClosed",
    "TransportClosed",
    "UnknownReceiverIndex",
]


class MeshError(Exception):
    """Base class of every error raised by meshcore."""


class ProtocolError(MeshError):
    """The remote side (peer, relay or network) sent bytes that break the protocol.

    Only the one connection or session that carried them is affected.
    """


class DecodeError(ProtocolError):
    """Bytes from the wire could not be decoded into a message (bad type, length or field)."""


class AuthenticationError(ProtocolError):
    """A message failed its MAC or AEAD check and was dropped."""


class ReplayError(ProtocolError):
    """A frame authenticated but was a duplicate or too old for the replay window; dropped."""


class HandshakeError(MeshError):
    """The end-to-end handshake failed.

    Deliberately uniform: the message never says which check failed, so that it cannot be
    used as an oracle by an attacker.
    """

    def __init__(
        self, message: str = "handshake failed: the peer could not be authenticated"
    ) -> None:
        super().__init__(message)


class ConfigError(MeshError):
    """A setting, flag, configuration file or key file given by the user is wrong.

    The message names what was wrong and how to fix it.
    """


class RelayError(MeshError):
    """The relay refused a request (registration, pairing) or closed the control connection."""

    def __init__(self, message: str, *, code: int = 0) -> None:
        super().__init__(message)
        self.code = code


class SessionClosed(MeshError):
    """The session ended; `reason` says why (closed by us, by the peer, or path failure)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class NoUsablePath(MeshError):
    """No path to the peer works: neither the relay circuit nor any direct attempt."""


class TransportClosed(MeshError):
    """The transport (WebSocket connection or relay circuit) is closed; `reason` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class KeyExpired(MeshError):
    """A session key is past its lifetime (age, message count or forgery budget).

    Nothing is sealed or accepted with it any more; start a new handshake.
    """


class UnknownReceiverIndex(ProtocolError):
    """A transport frame names a receiver index that no live key of ours has; dropped."""

    def __init__(self, message: str, *, receiver_index: int) -> None:
        super().__init__(message)
        self.receiver_index = receiver_index


class FrameTooLarge(MeshError):
    """A plaintext is too large to seal into one transport frame; split it first."""


class RegistryError(MeshError):
    """A registry of relays (a relay-list file, the on-chain registry) could not be read or
    changed. Callers fall back to the last good (cached) list.

    The message names the source and what failed: a file that is missing or malformed; an RPC
    node that is unreachable, on another chain than expected, with no contract (or no
    registry) at the address, a name that does not resolve, a malformed answer, or a
    transaction the contract refused (with its reason). `rpc_url` names the node, if any.
    """

    def __init__(self, message: str, *, rpc_url: str | None = None) -> None:
        super().__init__(message)
        self.rpc_url = rpc_url
