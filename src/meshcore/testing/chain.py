"""Chains to test the on-chain relay registry against: an embedded EVM and a local anvil node.

`embedded_chain()` is an in-process EVM (web3's `EthereumTesterProvider` on py-evm; needs
``eth-tester[py-evm]``) with funded accounts whose keys are known. `running_anvil()` starts
anvil (a real JSON-RPC node, from the npm package ``@foundry-rs/anvil``) on a free loopback
port and stops it afterwards; `find_anvil()` says where its binary is.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, cast

import attrs

from meshcore.chain.keyfile import AccountKey

if TYPE_CHECKING:
    from eth_typing import ChecksumAddress
    from web3 import Web3
    from web3.providers.base import BaseProvider
    from web3.types import Wei

__all__ = [
    "ANVIL_ENV",
    "AnvilNode",
    "EmbeddedChain",
    "account_key",
    "embedded_chain",
    "find_anvil",
    "fund",
    "new_account_keys",
    "running_anvil",
]

ANVIL_ENV: Final = "MESHCORE_ANVIL"
"""Environment variable naming the anvil binary, if it is not in .ci/node or on PATH."""
_LISTENING: Final = re.compile(rb"Listening on 127\.0\.0\.1:(\d+)")
_REPO: Final = Path(__file__).resolve().parents[3]


def account_key(secret: bytes) -> AccountKey:
    """The `AccountKey` of a raw 32-byte secret."""
    from eth_account import Account

    return AccountKey(secret=secret, address=str(Account.from_key(secret).address))


def new_account_keys(n: int) -> list[AccountKey]:
    """`n` fresh random accounts (unfunded)."""
    return [account_key(os.urandom(32)) for _ in range(n)]


@attrs.frozen
class EmbeddedChain:
    """An in-process EVM: its provider, a web3 on it, and the keys of its funded accounts."""

    provider: BaseProvider
    w3: Web3
    keys: tuple[AccountKey, ...]
    chain_id: int


def embedded_chain(accounts: int = 10) -> EmbeddedChain:
    """A fresh in-process EVM whose first `accounts` accounts hold 1,000,000 ether each."""
    from eth_tester import EthereumTester, PyEVMBackend
    from web3 import EthereumTesterProvider, Web3

    # eth-tester's accounts have the private keys 1, 2, 3, ... (its documented default).
    backend = PyEVMBackend(genesis_state=PyEVMBackend.generate_genesis_state(num_accounts=accounts))
    provider = EthereumTesterProvider(EthereumTester(backend))
    w3 = Web3(provider)
    keys = tuple(account_key(i.to_bytes(32, "big")) for i in range(1, accounts + 1))
    assert [k.address for k in keys] == list(w3.eth.accounts), "eth-tester changed its keys"
    return EmbeddedChain(provider=provider, w3=w3, keys=keys, chain_id=w3.eth.chain_id)


def fund(w3: Web3, keys: list[AccountKey], *, ether: int = 10) -> None:
    """Send `ether` to each key's account from the node's first (unlocked) account."""
    sender = w3.eth.accounts[0]
    hashes = [
        w3.eth.send_transaction(
            {
                "from": sender,
                "to": cast("ChecksumAddress", key.address),
                "value": cast("Wei", ether * 10**18),
            }
        )
        for key in keys
    ]
    for tx_hash in hashes:
        w3.eth.wait_for_transaction_receipt(tx_hash, timeout=30, poll_latency=0.05)


def find_anvil() -> Path | None:
    """The anvil binary: $MESHCORE_ANVIL, then .ci/node (where .ci/run installs it), then PATH.

    In .ci/node the platform package's own binary is preferred to the node wrapper in
    node_modules/.bin, so that signals reach anvil itself.
    """
    named = os.environ.get(ANVIL_ENV)
    if named:
        return Path(named) if os.access(named, os.X_OK) else None
    modules = _REPO / ".ci" / "node" / "node_modules"
    for candidate in sorted(modules.glob("@foundry-rs/anvil-*/bin/anvil")):
        if os.access(candidate, os.X_OK):
            return candidate
    wrapper = modules / ".bin" / "anvil"
    if os.access(wrapper, os.X_OK):
        return wrapper
    found = shutil.which("anvil")
    return Path(found) if found else None


@attrs.frozen
class AnvilNode:
    """A running anvil: its JSON-RPC URL and chain id."""

    url: str
    chain_id: int
    process: subprocess.Popen[bytes] = attrs.field(repr=False)

    def provider(self) -> BaseProvider:
        """An HTTP provider for it."""
        from web3 import HTTPProvider

        return HTTPProvider(self.url, request_kwargs={"timeout": 10})


@contextlib.contextmanager
def running_anvil(
    binary: Path, *, accounts: int = 4, chain_id: int = 31337, timeout_s: float = 30.0
) -> Iterator[AnvilNode]:
    """Run anvil on a free loopback port until the block ends, then stop it.

    Returns once the node has answered `eth_chainId`; waiting is bounded by `timeout_s`.

    Raises:
        RuntimeError: anvil exited, or did not listen and answer within `timeout_s`.
    """
    command = [
        str(binary),
        "--host", "127.0.0.1",
        "--port", "0",
        "--accounts", str(accounts),
        "--chain-id", str(chain_id),
    ]  # fmt: skip
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    try:
        port = _wait_listening(process, timeout_s)
        node = AnvilNode(url=f"http://127.0.0.1:{port}", chain_id=chain_id, process=process)
        _wait_answering(node, process, timeout_s)
        # Keep draining its output so that a chatty node never blocks on a full pipe.
        drain = _Drain(process)
        with drain:
            yield node
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()


def _wait_listening(process: subprocess.Popen[bytes], timeout_s: float) -> int:
    assert process.stdout is not None
    deadline = time.monotonic() + timeout_s
    seen = b""
    while (match := _LISTENING.search(seen)) is None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise RuntimeError(f"anvil did not listen within {timeout_s:g} s:\n{seen.decode()}")
        ready, _, _ = select.select([process.stdout], [], [], left)
        if ready:
            chunk = os.read(process.stdout.fileno(), 65536)
            if not chunk:
                raise RuntimeError(f"anvil exited ({process.wait()}):\n{seen.decode()}")
            seen += chunk
    return int(match.group(1))


def _wait_answering(node: AnvilNode, process: subprocess.Popen[bytes], timeout_s: float) -> None:
    from web3 import Web3

    w3 = Web3(node.provider())
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if w3.eth.chain_id == node.chain_id:
                return
        except Exception as exc:  # not answering yet
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(f"anvil at {node.url} does not answer: {exc}") from exc
        time.sleep(0.05)


class _Drain:
    """A thread that reads and discards a process's output until it closes."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        import threading

        self._process = process
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        stream = self._process.stdout
        assert stream is not None
        with contextlib.suppress(OSError, ValueError):
            while os.read(stream.fileno(), 65536):
                pass

    def __enter__(self) -> _Drain:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._process.poll() is None:
            self._process.terminate()
        self._thread.join(timeout=10)
