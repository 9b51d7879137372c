"""The meshcore error hierarchy: every error the library raises derives from `MeshError`.

Each class says whose fault it was (the network's bytes, a failed authentication, the
user's configuration, a closed session) so that callers can decide what to do next.

Naming: a *category* ends in ``Error`` and is what callers catch (`ProtocolError`,
`DecodeError`, `ConfigError`, ...); a *specific condition* is named for what happened,
without the suffix (`SessionClosed`, `KeyExpired`, `FrameTooLarge`, `UnsupportedVersion`,
`ConnectFailed`), and derives from the category it belongs to. Every error class of the
library lives in this module.
"""

from __future__ import annotations

from meshcore.proto.constants import PROTOCOL_VERSION

__all__ = [
    "AuthenticationError",
    "BadWebSocketFrame",
    "ClosedByPeer",
    "ConfigError",
    "ConfigProblems",
    "ConnectFailed",
    "ControlRequestFailed",
    "CryptoLibraryMissing",
    "DecodeError",
    "FrameTooLarge",
    "HandshakeError",
    "KeyExpired",
    "MeshError",
    "MessageTooLarge",
    "NoUsablePath",
    "ProtocolError",
    "RegistryError",
    "RelayError",
    "RelayNotVerified",
    "ReplayError",
    "SessionClosed",
    "TransportClosed",
    "UnknownReceiverIndex",
    "UnsupportedVersion",
]


class MeshError(Exception):
    """Base class of every error raised by meshcore."""


# --- the remote side broke the protocol -----------------------------------------------------


class ProtocolError(MeshError):
    """The remote side (peer, relay or network) sent bytes that break the protocol.

    Only the one connection or session that carried them is affected.
    """


class DecodeError(ProtocolError):
    """Bytes from the wire could not be decoded into a message (bad type, length or field)."""


class UnsupportedVersion(DecodeError):
    """The message carries a protocol version this build does not speak."""

    def __init__(self, version: int) -> None:
        super().__init__(
            f"unsupported protocol version {version} (this build speaks {PROTOCOL_VERSION}); "
            "upgrade meshcore on the older side so that both speak the same version"
        )
        self.version = version


class MessageTooLarge(DecodeError):
    """A message or one of its payloads is larger than its limit."""


class BadWebSocketFrame(DecodeError):
    """A WebSocket frame broke RFC 6455 or a limit; `close_code` is the code to close the
    connection with (1002 a protocol violation, 1003 a text message, 1007 a close reason
    that is not UTF-8, 1009 a message over the limit)."""

    def __init__(self, close_code: int, message: str) -> None:
        super().__init__(message)
        self.close_code = close_code


class AuthenticationError(ProtocolError):
    """A message failed its MAC or AEAD check and was dropped."""


class ReplayError(ProtocolError):
    """A frame authenticated but was a duplicate or too old for the replay window; dropped."""


class UnknownReceiverIndex(ProtocolError):
    """A transport frame names a receiver index that no live key of ours has; dropped."""

    def __init__(self, message: str, *, receiver_index: int) -> None:
        super().__init__(message)
        self.receiver_index = receiver_index


class HandshakeError(MeshError):
    """The end-to-end handshake failed.

    Deliberately uniform: the message never says which check failed, so that it cannot be
    used as an oracle by an attacker.
    """

    def __init__(
        self, message: str = "handshake failed: the peer could not be authenticated"
    ) -> None:
        super().__init__(message)


# --- the user's settings ----------------------------------------------------------------------


class ConfigError(MeshError):
    """A setting, flag, configuration file or key file given by the user is wrong.

    The message names what was wrong and how to fix it.
    """


class ConfigProblems(ConfigError):
    """Settings could not be loaded; `problems` lists each one as "path: what is wrong"."""

    def __init__(self, problems: list[str], *, what: str = "settings") -> None:
        self.problems = problems
        count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
        lines = "\n".join(f"  {p}" for p in problems)
        super().__init__(f"invalid {what} ({count}):\n{lines}")


class CryptoLibraryMissing(ConfigError, ImportError):
    """A required cryptography package is not installed; meshcore refuses to run without it."""


# --- relays, transports, sessions and keys ----------------------------------------------------


class RelayError(MeshError):
    """The relay refused a request (registration, pairing) or closed the control connection.

    `unreachable` is set when no relay answered at all (each was down, silent, or not the
    relay its entry names), as opposed to a relay that answered and refused.
    """

    def __init__(self, message: str, *, code: int = 0, unreachable: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.unreachable = unreachable


class RelayNotVerified(RelayError):
    """The relay could not prove that it is the relay its entry names: it presented other
    keys, did not answer the challenge, or answered wrongly. Nothing of ours was sent to it.

    `url` is the relay dialled, `expected` the relay id (text form) it had to prove.
    """

    def __init__(self, message: str, *, url: str, expected: str) -> None:
        super().__init__(message)
        self.url = url
        self.expected = expected


class TransportClosed(MeshError):
    """The transport (WebSocket connection or relay circuit) is closed; `reason` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ConnectFailed(TransportClosed):
    """A connection could not be opened: refused, unreachable, timed out, or upgrade refused.

    The message names the target; `errno` is the OS error number when there is one (a direct
    dialer re-dials quickly on `errno.ECONNREFUSED`, docs/direct.md).
    """

    def __init__(self, reason: str, *, errno: int | None = None) -> None:
        super().__init__(reason)
        self.errno = errno


class SessionClosed(MeshError):
    """The session ended; `reason` says why (closed by us, by the peer, or path failure)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ClosedByPeer(SessionClosed):
    """The peer closed the session (a Close frame) before both directions had ended: a clean
    end on its side, not a failure, but what we were still sending will not arrive."""


class NoUsablePath(MeshError):
    """No path to the peer works: neither the relay circuit nor any direct attempt."""


class KeyExpired(MeshError):
    """A session key is past its lifetime (age, message count or forgery budget).

    Nothing is sealed or accepted with it any more; start a new handshake.
    """


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


class ControlRequestFailed(MeshError):
    """A request on a peer's local control socket failed: nobody answered there, or the peer
    answered with an error (the message says which)."""
