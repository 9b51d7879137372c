"""A light load generator for the relay: many peers, each the library's own sans-IO
`RelayClientCore` (registration, heartbeat, reconnect backoff and jitter exactly as a real
peer), driven over a raw trio socket with a hand-written WebSocket client framing.

Why not `RelayClient`: trio-websocket and wsproto cost the generator about as much CPU per
connection as they cost the relay, and on a 2-core machine the generator would then measure
itself. Here a peer costs its KEM answer and a few socket calls. Each peer dials from its
own loopback address (127.16.x.y), so the relay's per-address rate limits see what they
would see from peers behind their own NATs. Used by `bench_relay_restart.py`.
"""

from __future__ import annotations

import base64
import math
import os
import struct
from collections import Counter
from typing import Any

import trio

from meshcore.errors import RelayError
from meshcore.proto.constants import RELAY_CREDIT_SUBPROTOCOL
from meshcore.proto.identity import Identity
from meshcore.proto.relayclient import RelayClientCore, RelayClientState
from meshcore.proto.relayclient_outputs import (
    CloseConnection,
    ConnectionLost,
    Output,
    Reconnect,
    Registered,
    RegistrationFailed,
    SendBytes,
)
from meshcore.proto.wire import ErrorCode

READ_BYTES = 65536
_CLOSE_FRAME = bytes((0x88, 0x82, 0, 0, 0, 0)) + struct.pack(">H", 1000)


def source_address(index: int) -> str:
    """A distinct loopback source address per peer (all of 127/8 is local on Linux)."""
    return f"127.16.{index // 250}.{index % 250 + 1}"


def ws_frame(payload: bytes, opcode: int = 0x2) -> bytes:
    """One client-to-server WebSocket frame; the mask key is zero, so the payload goes as is
    (RFC 6455 requires a mask, not a random one from a load generator)."""
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        head = struct.pack(">BBH", 0x80 | opcode, 0xFE, n)
    else:
        head = struct.pack(">BBQ", 0x80 | opcode, 0xFF, n)
    return head + b"\0\0\0\0" + payload


def parse_frames(buf: bytearray) -> list[tuple[int, bytes]]:
    """Take every complete server frame (opcode, payload) off the front of `buf`."""
    frames = []
    while len(buf) >= 2:
        b0, b1 = buf[0], buf[1]
        n, off = b1 & 0x7F, 2
        if n == 126:
            if len(buf) < 4:
                break
            n, off = struct.unpack_from(">H", buf, 2)[0], 4
        elif n == 127:
            if len(buf) < 10:
                break
            n, off = struct.unpack_from(">Q", buf, 2)[0], 10
        if len(buf) < off + n:
            break
        frames.append((b0 & 0x0F, bytes(buf[off : off + n])))
        del buf[: off + n]
    return frames


class Herd:
    """N peers against one relay URL; counts what happened to them."""

    def __init__(
        self,
        identities: list[Identity],
        port: int,
        *,
        core_options: dict[str, Any],
        seed: int = 1,
    ) -> None:
        import random

        self.port = port
        self.identities = identities
        self.url = f"ws://127.0.0.1:{port}/"
        self._core_options = core_options
        self._refill_gate: trio.Semaphore | None = None
        self.cores = [
            RelayClientCore(
                identity, self.url, random=random.Random(seed * 1_000_003 + k), **core_options
            )
            for k, identity in enumerate(identities)
        ]
        self.registered_at: list[list[float]] = [[] for _ in identities]
        """Per peer, the trio time of every registration."""
        self.failures: Counter[str] = Counter()
        """Failed attempts by cause: the relay's error code name, or the dial's error."""
        self.losses: Counter[str] = Counter()
        self.first_waits: list[float] = []
        """The backoff waits `ConnectionLost` announced (the herd's spread)."""
        self.registered_now = 0
        self.changed = trio.Event()
        self._key = base64.b64encode(os.urandom(16)).decode()

    def count_registered(self, at_least: int) -> int:
        """Peers registered at least `at_least` times."""
        return sum(len(times) >= at_least for times in self.registered_at)

    async def wait_registered(self, at_least: int, *, timeout: float) -> bool:
        """Until every peer registered `at_least` times (True) or `timeout` passed."""
        with trio.move_on_after(timeout):
            while self.count_registered(at_least) < len(self.cores):
                self.changed = trio.Event()
                await self.changed.wait()
            return True
        return False

    async def run(self, index: int, gate: trio.Semaphore | None = None) -> None:
        """Drive peer `index` for good: dial, register, answer, reconnect when told. With
        `gate`, the first attempt holds a token of it until it registered (or failed)."""
        core = self.cores[index]
        src = source_address(index)
        self._refill_gate = gate
        while core.state is not RelayClientState.CLOSED:
            sock = trio.socket.socket()
            sock.setsockopt(trio.socket.IPPROTO_TCP, trio.socket.TCP_NODELAY, 1)
            held = gate
            if held is not None:
                await held.acquire()
                gate = None
            try:
                await sock.bind((src, 0))
                buf, credited = await self._dial(sock)
                await self._connection(index, core, sock, buf, credited, held)
            except (OSError, _UpgradeFailed) as exc:
                self._execute(index, core, core.connection_failed(exc, trio.current_time()))
            finally:
                sock.close()
                if held is not None and core.registrations == 0:
                    held.release()
            await self._wait_reconnect(core)
            if core.state is RelayClientState.CLOSED and core.registrations == 0:
                # the first attempt failed; the machine gives up on it (its driver would
                # raise), and a peer would be started again: so start it again
                self.failures[f"first attempt: {core.close_reason}"[:60]] += 1
                await trio.sleep(1.0)
                core = self.cores[index] = RelayClientCore(
                    self.identities[index], self.url, **self._core_options
                )
                gate = self._refill_gate

    async def _dial(self, sock: trio.socket.SocketType) -> tuple[bytearray, bool]:
        await sock.connect(("127.0.0.1", self.port))
        request = (
            f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {self._key}\r\n"
            f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: {RELAY_CREDIT_SUBPROTOCOL}"
            "\r\n\r\n"
        )
        await sock.send(request.encode())
        buf = bytearray()
        while (end := buf.find(b"\r\n\r\n")) < 0:
            chunk = await sock.recv(READ_BYTES)
            if not chunk:
                raise _UpgradeFailed("the relay closed the connection during the upgrade")
            buf += chunk
        head = bytes(buf[:end]).decode("latin-1").lower()
        if not head.startswith("http/1.1 101"):
            raise _UpgradeFailed(head.splitlines()[0])
        del buf[: end + 4]
        return buf, RELAY_CREDIT_SUBPROTOCOL in head

    async def _connection(
        self,
        index: int,
        core: RelayClientCore,
        sock: trio.socket.SocketType,
        buf: bytearray,
        credited: bool,
        held: trio.Semaphore | None,
    ) -> None:
        """One open connection, until it closes or the machine closes it."""
        out = core.connection_opened((), trio.current_time(), credited=credited)
        if not await self._flush(index, core, sock, out):
            return
        while True:
            for opcode, payload in parse_frames(buf):
                now = trio.current_time()
                if opcode == 0x2:
                    out = core.receive_data(payload, now)
                elif opcode == 0x9:
                    await sock.send(ws_frame(payload, 0xA))
                    continue
                elif opcode == 0x8:
                    await sock.send(_CLOSE_FRAME)
                    out = core.connection_lost("the relay closed the WebSocket", now)
                    self._execute(index, core, out)
                    return
                else:
                    continue
                if not await self._flush(index, core, sock, out):
                    return
            if held is not None and core.state is RelayClientState.REGISTERED:
                held.release()  # the first registration is done: let the next peer dial
                held = None
            deadline = core.get_timer()
            chunk = None
            with trio.move_on_at(math.inf if deadline is None else deadline):
                try:
                    chunk = await sock.recv(READ_BYTES)
                except OSError as exc:
                    chunk = b""
                    reason = f"connection broke: {exc}"
                else:
                    reason = "the relay closed the TCP connection"
                if not chunk:
                    self._execute(index, core, core.connection_lost(reason, trio.current_time()))
                    return
            if chunk is None:
                if not await self._flush(index, core, sock, core.handle_timer(trio.current_time())):
                    return
                continue
            buf += chunk

    async def _flush(
        self, index: int, core: RelayClientCore, sock: trio.socket.SocketType, out: list[Output]
    ) -> bool:
        """Execute `out` on `sock`; False once the connection is to be closed."""
        data = self._execute(index, core, out)
        if data:
            try:
                await sock.send(data)
            except OSError as exc:
                lost = core.connection_lost(f"send failed: {exc}", trio.current_time())
                self._execute(index, core, lost)
                return False
        return core.state in (
            RelayClientState.VERIFYING,
            RelayClientState.HELLO_SENT,
            RelayClientState.AUTHENTICATING,
            RelayClientState.REGISTERED,
        ) and not any(isinstance(o, CloseConnection) for o in out)

    def _execute(self, index: int, core: RelayClientCore, out: list[Output] | None) -> bytes:
        """Record the events of `out`; return the bytes to send."""
        sends = []
        for item in out or ():
            kind = type(item)
            if kind is SendBytes:
                assert isinstance(item, SendBytes)
                sends.append(ws_frame(item.data))
            elif kind is Registered:
                self.registered_at[index].append(trio.current_time())
                self.changed.set()
            elif kind is RegistrationFailed:
                assert isinstance(item, RegistrationFailed)
                err = item.error
                if isinstance(err, RelayError) and err.code is not None:
                    self.failures[ErrorCode(err.code).name.lower()] += 1
                else:
                    self.failures[type(err).__name__] += 1
            elif kind is ConnectionLost:
                assert isinstance(item, ConnectionLost)
                self.losses["graceful" if item.graceful else "unannounced"] += 1
                self.first_waits.append(item.retry_in_s)
        return b"".join(sends)

    async def _wait_reconnect(self, core: RelayClientCore) -> None:
        """Sleep out the backoff until the machine says `Reconnect`."""
        while core.state is RelayClientState.LOST:
            deadline = core.get_timer()
            if deadline is None:
                return
            await trio.sleep_until(deadline)
            for item in core.handle_timer(trio.current_time()):
                if isinstance(item, Reconnect):
                    return


class _UpgradeFailed(Exception):
    """The relay did not answer the upgrade with 101."""
