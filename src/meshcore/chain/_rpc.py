"""One connection to an Ethereum JSON-RPC node, with every failure turned into `RegistryError`.

web3 is imported here only when a connection is opened, so that `meshcore.chain` imports
without the `chain` extra and says what to install when it is used. Every request is
counted (the reader reports how many it made) and none is retried: the caller decides
when to try again.
"""

from __future__ import annotations

import contextlib
import importlib.util
import re
import sys
import threading
import urllib.parse
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Final, cast

from meshcore.errors import ConfigError, RegistryError

if TYPE_CHECKING:
    from eth_typing import ChecksumAddress
    from web3 import Web3
    from web3.providers.base import BaseProvider

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "INSTALL_HINT",
    "Rpc",
    "describe_rpc_url",
    "require_web3",
    "revert_reason",
    "web3_installed",
]

DEFAULT_TIMEOUT_S: Final = 10.0
"""How long one JSON-RPC request may take before the node counts as unreachable."""
INSTALL_HINT: Final = "pip install 'meshcore[chain]'"


class _Stopped(Exception):
    """The caller stopped waiting (a cancelled async read); raised between two requests."""


def web3_installed() -> bool:
    """Whether web3 can be imported, found without importing it (that takes about a second)."""
    if "web3" in sys.modules:
        return sys.modules["web3"] is not None
    return importlib.util.find_spec("web3") is not None


def require_web3() -> None:
    """Fail at once, saying which extra to install, when web3 is missing.

    Raises:
        ConfigError: web3 (the `chain` extra) is not installed.
    """
    if not web3_installed():
        raise ConfigError(
            f"the on-chain relay registry needs web3.py, which is not installed: {INSTALL_HINT}"
        )


def describe_rpc_url(url: str) -> str:
    """The RPC URL as errors and logs show it: no credentials, query or deep path.

    Hosted nodes carry an API key in the path (``https://host/v3/KEY``) or the query; only
    the scheme, host, port and first path segment are shown.
    """
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "<an unparsable RPC URL>"
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{port}" if port is not None else host
    segments = [s for s in parts.path.split("/") if s]
    path = "/" + segments[0] if segments else ""
    if len(segments) > 1 or parts.query:
        path += "/…"
    return f"{parts.scheme}://{netloc}{path}"


def revert_reason(exc: BaseException) -> str | None:
    """The reason string of a reverted call or transaction, or None if `exc` is no revert.

    JSON-RPC nodes report a revert as web3's `ContractLogicError`; the embedded EVM
    (eth-tester) raises its own `TransactionFailed`.
    """
    from web3.exceptions import ContractLogicError

    if isinstance(exc, ContractLogicError):
        text = str(exc.message or "")
    elif type(exc).__name__ == "TransactionFailed" and type(exc).__module__.startswith(
        "eth_tester"
    ):
        arg = exc.args[0] if exc.args else ""
        text = _decode_error_string(arg) if isinstance(arg, bytes) else str(arg)
    else:
        return None
    text = text.removeprefix("execution reverted").lstrip(": ").strip()
    return text or "no reason given"


_ERROR_SELECTOR: Final = bytes.fromhex("08c379a0")  # Error(string), the Solidity/Vyper revert


def _decode_error_string(data: bytes) -> str:
    from eth_abi.abi import decode

    if data[:4] != _ERROR_SELECTOR:
        return ""
    try:
        (reason,) = decode(["string"], data[4:])
    except Exception:  # a malformed revert payload has no reason to show
        return ""
    return str(reason)


_CONNECT_REASONS: Final = (
    (re.compile(r"connection refused", re.I), "connection refused"),
    (re.compile(r"name or service not known|nodename nor servname|getaddrinfo", re.I),
     "host not found"),
    (re.compile(r"network is unreachable", re.I), "network unreachable"),
    (re.compile(r"no route to host", re.I), "no route to host"),
    (re.compile(r"connection reset", re.I), "connection reset"),
)  # fmt: skip


def _connection_reason(exc: BaseException) -> str:
    text = str(exc)
    for pattern, reason in _CONNECT_REASONS:
        if pattern.search(text):
            return reason
    return "unreachable"


class Rpc:
    """A JSON-RPC connection (HTTP URL or a web3 provider) for one read or one command.

    `guard(what)` turns any failure of the requests inside it into a `RegistryError` that
    names the node and `what` was being done. Not thread-safe: one thread uses it at a time.
    """

    def __init__(
        self,
        rpc: str | BaseProvider,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        stop: threading.Event | None = None,
    ) -> None:
        require_web3()
        from web3 import HTTPProvider, Web3
        from web3.middleware.base import Web3Middleware
        from web3.types import RPCEndpoint, RPCResponse

        self.timeout_s = timeout_s
        self.calls = 0
        self._stop = stop or threading.Event()
        if isinstance(rpc, str):
            scheme = urllib.parse.urlsplit(rpc).scheme
            if scheme not in ("http", "https"):
                raise ConfigError(
                    f"RPC URL {describe_rpc_url(rpc)!r} must start with http:// or https:// "
                    "(e.g. http://127.0.0.1:8545)"
                )
            self.label = describe_rpc_url(rpc)
            provider: BaseProvider = HTTPProvider(
                rpc, request_kwargs={"timeout": timeout_s}, exception_retry_configuration=None
            )
        else:
            self.label = type(rpc).__name__
            provider = rpc
        rpc_self = self

        class _CountRequests(Web3Middleware):
            def wrap_make_request(self, make_request: Any) -> Any:
                def counted(method: RPCEndpoint, params: Any) -> RPCResponse:
                    if rpc_self._stop.is_set():
                        raise _Stopped()
                    rpc_self.calls += 1
                    return make_request(method, params)  # type: ignore[no-any-return]

                return counted

        self.w3: Web3 = Web3(provider, middleware=[])
        self.w3.middleware_onion.add(_CountRequests, name="meshcore_count_requests")

    def error(self, message: str) -> RegistryError:
        """A `RegistryError` naming this node."""
        return RegistryError(f"registry via {self.label}: {message}", rpc_url=self.label)

    @contextlib.contextmanager
    def guard(self, what: str) -> Iterator[None]:
        """Map failures of the requests made inside to one-line `RegistryError`s."""
        import requests
        from web3.exceptions import TimeExhausted, Web3RPCError

        try:
            yield
        except RegistryError:
            raise
        except _Stopped:
            raise self.error(f"stopped while {what}") from None
        except requests.Timeout:
            raise self.error(f"no answer within {self.timeout_s:g} s while {what}") from None
        except requests.ConnectionError as exc:
            raise self.error(f"cannot connect ({_connection_reason(exc)}) while {what}") from None
        except requests.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else "?"
            raise self.error(f"HTTP status {status} while {what}") from None
        except TimeExhausted:
            raise self.error(f"no receipt within the time allowed while {what}") from None
        except Exception as exc:  # web3's error surface is wide; untrusted answers end here
            reason = revert_reason(exc)
            if reason is not None:
                raise self.error(f"the contract refused {what}: {reason}") from None
            if isinstance(exc, Web3RPCError):
                detail = exc.message or str(exc)
                raise self.error(f"the node refused {what}: {_one_line(detail)}") from None
            raise self.error(
                f"malformed answer while {what} ({type(exc).__name__}: {_one_line(str(exc))})"
            ) from None

    def chain_id(self) -> int:
        """The node's chain id (EIP-155)."""
        with self.guard("reading the chain id"):
            value = self.w3.eth.chain_id
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise self.error(f"malformed answer to eth_chainId: {value!r}")
        return value

    def check_chain_id(self, expected: int) -> int:
        """The chain id, refused unless it is `expected`."""
        got = self.chain_id()
        if got != expected:
            raise self.error(
                f"wrong chain: expected chain id {expected}, but the node is on chain {got}"
            )
        return got

    def block_number(self) -> int:
        """The latest block's number."""
        with self.guard("reading the block number"):
            value = self.w3.eth.block_number
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise self.error(f"malformed answer to eth_blockNumber: {value!r}")
        return value

    def call(self, fn: Any, *, block: int | str, what: str, absent: str) -> Any:
        """Call the contract function `fn` at `block`; `absent` is the error if no code is there.

        An empty answer is what a node returns for an address without code; any other answer
        that does not decode is malformed.
        """
        from web3.exceptions import BadFunctionCallOutput

        with self.guard(what):
            try:
                return fn.call(block_identifier=block)
            except BadFunctionCallOutput:
                if self.has_code(fn.address, block):
                    raise
        raise self.error(absent)

    def contract(self, address: str, abi: Any) -> Any:
        """A web3 contract handle for the checksummed `address`."""
        return self.w3.eth.contract(address=cast("ChecksumAddress", address), abi=abi)

    def has_code(self, address: str, block: int | str = "latest") -> bool:
        """Whether a contract is deployed at `address` (at `block`)."""
        with self.guard(f"reading the code at {address}"):
            code = self.w3.eth.get_code(cast("ChecksumAddress", address), cast(Any, block))
        return len(code) > 0


def _one_line(text: str, limit: int = 200) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
