"""The relay benchmarks' parts: the relay as a subprocess (`python -m meshcore_relay`) with its
memory and CPU read from /proc, a bare trio-websocket echo server to compare it with, and a
peer in this process that speaks the control protocol directly (register, pair)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio
import trio_websocket

from meshcore._transport import WebSocketTransport, open_transport
from meshcore.proto import wire
from meshcore.proto.identity import Identity, PublicBundle
from meshcore.proto.relayauth import answer_challenge, challenge_relay

LISTENING = re.compile(r"relay listening on (ws://127\.0\.0\.1:\d+/)")
METRICS = re.compile(r"serving metrics on http://127\.0\.0\.1:(\d+)/metrics")
UNLIMITED = [
    "--connections-per-s-per-ip", "1000000", "--connections-burst-per-ip", "1000000",
    "--pairings-per-s", "1000000", "--pairings-burst", "1000000",
]  # fmt: skip


# --- processes ------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) process `pid` has used so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class RelayProcess:
    """`python -m meshcore_relay` on a free loopback port, its log in a temporary file."""

    def __init__(self, *flags: str) -> None:
        fd, name = tempfile.mkstemp(prefix="bench-relay-", suffix=".log")
        self.log = Path(name)
        self.key_dir = tempfile.TemporaryDirectory(prefix="bench-relay-")
        self.identity = Identity.generate()
        key = Path(self.key_dir.name) / "relay.key"
        self.identity.save(key)
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "meshcore_relay", "--listen", "127.0.0.1:0",
                 "--identity", str(key), *flags],
                stderr=fd,
            )  # fmt: skip
        finally:
            os.close(fd)
        deadline = time.monotonic() + 30
        while (match := LISTENING.search(self.log.read_text())) is None:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.proc.kill()
                raise RuntimeError(f"relay did not start:\n{self.log.read_text()}")
            time.sleep(0.05)
        self.url = match.group(1)
        metrics = METRICS.search(self.log.read_text())
        self.metrics_port = int(metrics.group(1)) if metrics else None

    def rss_mib(self) -> tuple[float, float]:
        """(current RSS, peak RSS) of the relay process, MiB."""
        fields = dict(
            line.split(":", 1)
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines()
        )
        return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024

    def cpu_s(self) -> float:
        """CPU seconds (user + system) the relay process has used so far."""
        return cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=60)
        self.log.unlink()
        self.key_dir.cleanup()


async def _echo(request: trio_websocket.WebSocketRequest) -> None:
    ws = await request.accept()
    try:
        while True:
            await ws.send_message(await ws.get_message())
    except trio_websocket.ConnectionClosed:
        pass


async def serve_echo() -> None:
    """A bare trio-websocket echo server with the relay's read size; prints its port."""
    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            lambda task_status: trio_websocket.serve_websocket(
                _echo,
                "127.0.0.1",
                0,
                None,
                max_message_size=1 << 20,
                receive_buffer_size=65536,
                task_status=task_status,
            )
        )
        print(server.port, flush=True)


# --- a peer that speaks the control protocol -------------------------------------------------


async def register(
    transport: WebSocketTransport, identity: Identity, relay: Identity | None = None
) -> None:
    """Register as `identity`; with `relay`, verify first that the relay is `relay`."""
    keys = None
    if relay is not None:
        keys = wire.decode_control_untrusted(await transport.receive())  # sent first, unasked
        assert isinstance(keys, wire.RelayIdentity), keys
        presented = PublicBundle(keys.x25519_public, keys.kem_public)
        assert presented.peer_id == relay.peer_id
        ask, pending = challenge_relay(presented)
        await transport.send(wire.encode_control(ask))
        proof = wire.decode_control_untrusted(await transport.receive())
        assert isinstance(proof, wire.RelayProof) and pending.verify(proof)
    bundle = identity.public
    await transport.send(
        wire.encode_control(wire.Hello(bundle.x25519_public, bundle.kem_public, ()))
    )
    if keys is None:
        keys = wire.decode_control_untrusted(await transport.receive())  # sent first, unasked
        assert isinstance(keys, wire.RelayIdentity), keys
    challenge = wire.decode_control_untrusted(await transport.receive())
    assert isinstance(challenge, wire.Challenge), challenge
    await transport.send(wire.encode_control(answer_challenge(identity, challenge)))
    await expect(transport, wire.Registered)  # a relay under load may ping first


async def expect(transport: WebSocketTransport, cls: type[Any]) -> Any:
    while True:
        msg = wire.decode_control_untrusted(await transport.receive())
        if isinstance(msg, wire.Ping):
            await transport.send(wire.encode_control(wire.Pong(msg.nonce)))
            continue
        assert isinstance(msg, cls), msg
        return msg


async def pair(a: WebSocketTransport, b: WebSocketTransport, target: Identity, rid: int) -> int:
    await a.send(wire.encode_control(wire.Connect(rid, target.peer_id.digest)))
    invite = await expect(b, wire.Invite)
    await b.send(wire.encode_control(wire.Accept(invite.request_id)))
    paired = await expect(a, wire.Paired)
    await expect(b, wire.Paired)
    return int(paired.circuit_id)


async def answer_pings(transport: WebSocketTransport) -> None:
    """Stay idle on a registered connection, answering the relay's pings, until it ends."""
    while True:
        msg = wire.decode_control_untrusted(await transport.receive())
        if isinstance(msg, wire.Ping):
            await transport.send(wire.encode_control(wire.Pong(msg.nonce)))


@asynccontextmanager
async def registered_peer(url: str, identity: Identity) -> AsyncIterator[WebSocketTransport]:
    async with open_transport(url) as transport:
        await register(transport, identity)
        yield transport
