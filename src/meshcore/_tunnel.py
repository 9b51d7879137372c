"""The layer-2 tunnel runtime: pumps frames between a TAP device and one session per peer,
switching them by MAC address, and keeps a session up with every configured peer.

Pairing: for each pair of peers exactly one session exists; the peer with the lower id dials,
the other answers (its allow-list is the configured peers with lower ids). A failed session
or relay connection is retried with jittered exponential backoff; the device stays up.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable, Collection, Iterable
from contextlib import AbstractContextManager, nullcontext
from functools import partial

import attrs
import trio

from meshcore._api import Meeting, Relays, open_peer_session, serve
from meshcore._control import SessionRegistry
from meshcore._nursery import open_hidden_nursery
from meshcore._registry import Registry
from meshcore._session import Session
from meshcore.errors import DecodeError, MeshError
from meshcore.proto.backoff import Backoff
from meshcore.proto.constants import (
    TUNNEL_BACKOFF_MAX_S,
    TUNNEL_BACKOFF_MIN_S,
    TUNNEL_MAX_RECORD_BYTES,
    TUNNEL_QUEUE_BYTES,
    TUNNEL_READ_BATCH_FRAMES,
)
from meshcore.proto.identity import Identity, PeerId
from meshcore.proto.paths import PathSettings
from meshcore.proto.rendezvous import DEFAULT_RENDEZVOUS_K
from meshcore.proto.session import SessionSettings
from meshcore.proto.switch import FrameAssembler, FramePacker, Switch

__all__ = ["FramePump", "LinkStats", "TunnelConfig", "run_tunnel"]

log = logging.getLogger("meshcore.tunnel")

_STABLE_SESSION_S = 10.0
"""A session that lived this long resets its peer's backoff."""


@attrs.define
class LinkStats:
    """Counters of one peer's traffic (since the tunnel started, over all its sessions)."""

    frames_out: int = 0
    bytes_out: int = 0
    messages_out: int = 0
    frames_in: int = 0
    bytes_in: int = 0
    messages_in: int = 0
    dropped_queue_full: int = 0
    """Frames for this peer dropped because its session fell behind by TUNNEL_QUEUE_BYTES."""
    dropped_invalid: int = 0
    """Frames from this peer refused by the switch (too short, bad source address)."""
    dropped_write: int = 0
    """Frames from this peer the device refused (bad virtio-net header, device down)."""
    bad_messages: int = 0
    """Messages from this peer that did not decode into frames."""
    sessions: int = 0


class _Link:
    """One live session with one peer, and the frames queued towards it."""

    __slots__ = ("channel", "done", "idle", "packer", "peer", "scope", "stats", "wake")

    def __init__(self, peer: PeerId, channel: trio.abc.Channel[bytes], stats: LinkStats) -> None:
        self.peer = peer
        self.channel = channel
        self.stats = stats
        self.packer = FramePacker()
        self.scope = trio.CancelScope()
        self.wake = trio.Event()
        self.idle = False
        self.done = trio.Event()


class FramePump:
    """Moves frames between a packet file descriptor (a TAP device) and peers' sessions.

    `fd` must be non-blocking and return one frame per read, each behind a virtio-net header
    of `vnet_header_bytes`. Run `run_device_reader` once, and `run_link(peer, channel)` for
    each session (a `trio.abc.Channel[bytes]`, such as a `Session`).

    Frames read from the device are switched (`proto.switch.Switch`), packed into messages per
    peer (many frames per message when the session is busy) and sent by one task per peer;
    a peer whose session falls behind by `queue_bytes` loses new frames (tail drop), so one
    slow peer never stalls the others. Frames from a session are written to the device.
    """

    def __init__(
        self,
        fd: int,
        vnet_header_bytes: int,
        peers: Iterable[PeerId],
        *,
        queue_bytes: int = TUNNEL_QUEUE_BYTES,
        batch_frames: int = TUNNEL_READ_BATCH_FRAMES,
    ) -> None:
        self._fd = fd
        self._header = vnet_header_bytes
        self._queue_bytes = queue_bytes
        self._batch = batch_frames
        self.switch: Switch[PeerId] = Switch(peers)
        self._links: dict[PeerId, _Link] = {}
        self.stats: dict[PeerId, LinkStats] = {p: LinkStats() for p in self.switch.ports}
        self.dropped_no_session = 0
        """Frames for a configured peer that had no session at the time."""
        self.frames_read = 0
        self._changed = trio.Event()

    # ----------------------------------------------------------------- queries
    @property
    def linked(self) -> frozenset[PeerId]:
        """The peers with a live session now."""
        return frozenset(self._links)

    async def wait_linked(self, peers: Collection[PeerId]) -> None:
        """Wait until every one of `peers` has a live session; cancelling it only stops the
        waiting."""
        while not set(peers) <= self._links.keys():
            await self._changed.wait()

    async def wait_unlinked(self, peers: Collection[PeerId]) -> None:
        """Wait until none of `peers` has a live session; cancelling it only stops the
        waiting."""
        while not self._links.keys().isdisjoint(peers):
            await self._changed.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    # ----------------------------------------------------------------- device -> peers
    async def run_device_reader(self) -> None:
        """Read frames from the device until cancelled, several per wakeup.

        Raises `MeshError` if the device fails (it was removed under us).
        """
        fd, header, batch = self._fd, self._header, self._batch
        buffer = bytearray(header + TUNNEL_MAX_RECORD_BYTES)
        view = memoryview(buffer)
        switch, links = self.switch, self._links
        while True:
            await trio.lowlevel.wait_readable(fd)
            now = trio.current_time()
            for _ in range(batch):
                try:
                    size = os.readv(fd, (buffer,))
                except BlockingIOError:
                    break
                except OSError as exc:
                    raise MeshError(f"reading the TAP device failed: {exc.strerror}") from None
                self.frames_read += 1
                for peer in switch.from_local(view[header:size], now):
                    link = links.get(peer)
                    if link is None:
                        self.dropped_no_session += 1
                        continue
                    stats = link.stats
                    packer = link.packer
                    if packer.queued_bytes >= self._queue_bytes:
                        stats.dropped_queue_full += 1
                        continue
                    packer.add(view[:size])
                    stats.frames_out += 1
                    stats.bytes_out += size
                    if link.idle:
                        link.idle = False
                        link.wake.set()

    async def _send_loop(self, link: _Link) -> None:
        packer, channel, stats = link.packer, link.channel, link.stats
        while True:
            message = packer.take()
            if message is None:
                link.wake = trio.Event()
                link.idle = True
                await link.wake.wait()
                continue
            await channel.send(message)
            stats.messages_out += 1

    # ----------------------------------------------------------------- peers -> device
    async def _receive_loop(self, link: _Link) -> None:
        fd, header, peer = self._fd, self._header, link.peer
        switch, stats, channel = self.switch, link.stats, link.channel
        assembler = FrameAssembler()
        while True:
            message = await channel.receive()
            stats.messages_in += 1
            try:
                frames = assembler.decode_untrusted(message)
            except DecodeError as exc:
                if not stats.bad_messages:
                    log.warning("peer %s sent a malformed tunnel message: %s", peer.short(), exc)
                stats.bad_messages += 1
                continue
            now = trio.current_time()
            for frame in frames:
                if not switch.from_peer(peer, frame[header:], now):
                    stats.dropped_invalid += 1
                    continue
                try:
                    os.write(fd, frame)
                except OSError:
                    stats.dropped_write += 1
                    continue
                stats.frames_in += 1
                stats.bytes_in += len(frame)

    async def run_link(self, peer: PeerId, channel: trio.abc.Channel[bytes]) -> str:
        """Carry `peer`'s frames over `channel` until it ends; returns why it ended.

        A newer link for the same peer replaces this one (this call then returns). Never
        raises for the channel's failure; cancellation propagates as usual.
        """
        if peer not in self.stats:
            raise ValueError(f"peer {peer.short()} is not one of this tunnel's peers")
        old = self._links.get(peer)
        if old is not None:
            old.scope.cancel()
        link = _Link(peer, channel, self.stats[peer])
        link.stats.sessions += 1
        self._links[peer] = link
        self._notify()
        reason = "replaced by a newer session"
        try:
            with link.scope:
                async with trio.open_nursery() as nursery:
                    outcome: list[str] = []

                    async def guard(loop: Callable[[_Link], Awaitable[None]]) -> None:
                        try:
                            await loop(link)
                        except trio.EndOfChannel:
                            outcome.append("closed by the peer")
                        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                            outcome.append(str(exc.__cause__ or exc) or type(exc).__name__)
                        nursery.cancel_scope.cancel()

                    nursery.start_soon(guard, self._send_loop)
                    nursery.start_soon(guard, self._receive_loop)
                if outcome:
                    reason = outcome[0]
        finally:
            link.packer.clear()
            if self._links.get(peer) is link:
                del self._links[peer]
                self.switch.forget_port(peer)
                self._notify()
            link.done.set()
        return reason


# --- sessions through the relay -------------------------------------------------------------


@attrs.frozen
class TunnelConfig:
    """What `run_tunnel` needs: where the peers meet, who we are, and the peers of the mesh."""

    relay: Relays
    """One relay URL, a list of relays, or a `Registry` (docs/relay-network.md)."""
    identity: Identity = attrs.field(repr=False)
    peers: tuple[PeerId, ...]
    settings: SessionSettings | None = None
    timeout: float = 10.0
    """Relay requests and handshakes give up after this many seconds."""
    path_settings: PathSettings = attrs.field(factory=PathSettings)
    """Direct paths: mode (auto by default) and timers, as for `meshcore.connect`."""
    registry: SessionRegistry | None = attrs.field(default=None, eq=False)
    """Where live sessions are listed for `meshcore-peer status` and `ping` (optional)."""
    rendezvous_k: int = DEFAULT_RENDEZVOUS_K
    """With several relays: how many rendezvous relays each peer registers at."""
    on_meeting: Callable[[Meeting | None], None] | None = attrs.field(default=None, eq=False)
    """Called with the relay connection (or network) once registered, and with None when it
    is gone (for `meshcore-peer relays`)."""

    @property
    def relay_name(self) -> str:
        """The relay for log lines: its URL, or what the list is."""
        relay = self.relay
        if isinstance(relay, str):
            return relay
        if isinstance(relay, Registry):
            return f"the relays of {relay.source}"
        return f"{len(relay)} relays"

    def __attrs_post_init__(self) -> None:
        me = self.identity.peer_id
        if me in self.peers:
            raise ValueError(f"the peers include this peer's own id {me.short()}")

    @property
    def dials(self) -> tuple[PeerId, ...]:
        """The peers we dial: those with a higher id than ours."""
        me = self.identity.peer_id.digest
        return tuple(p for p in self.peers if p.digest > me)

    @property
    def answers(self) -> tuple[PeerId, ...]:
        """The peers that dial us (our allow-list): those with a lower id than ours."""
        me = self.identity.peer_id.digest
        return tuple(p for p in self.peers if p.digest < me)


_BACKOFF_JITTER = 0.2
"""Retries of a failed session or relay connection wait ±20 % around their backoff step."""


def _backoff() -> Backoff:
    """From TUNNEL_BACKOFF_MIN_S doubling to TUNNEL_BACKOFF_MAX_S, jittered."""
    return Backoff(TUNNEL_BACKOFF_MIN_S, TUNNEL_BACKOFF_MAX_S, _BACKOFF_JITTER)


async def run_tunnel(
    fd: int,
    vnet_header_bytes: int,
    config: TunnelConfig,
    *,
    task_status: trio.TaskStatus[FramePump] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the tunnel on device `fd` until cancelled: `pump = await nursery.start(run_tunnel,
    ...)` returns once the device is being read (sessions come up in the background; await
    `pump.wait_linked(peers)` for them).

    Session and relay failures are logged and retried with backoff; only a failing device
    ends the tunnel (`MeshError`). Cancellation closes every session (each peer is told,
    under a shielded, bounded scope) and the relay connection; the device stays open, it is
    the caller's.
    """
    unique = tuple(dict.fromkeys(config.peers))
    pump = FramePump(fd, vnet_header_bytes, unique)
    async with open_hidden_nursery() as nursery:
        nursery.start_soon(pump.run_device_reader)
        nursery.start_soon(_keep_relay, pump, config)
        task_status.started(pump)
        await trio.sleep_forever()


async def _keep_relay(pump: FramePump, config: TunnelConfig) -> None:
    """Stay registered at the relay: answer the lower peers, dial the higher ones."""
    backoff = _backoff()
    while True:
        started = trio.current_time()
        try:
            async with open_hidden_nursery() as nursery:
                handler = partial(_answered, pump, config)
                client: Meeting = await nursery.start(
                    partial(
                        serve,
                        config.relay,
                        config.identity,
                        config.answers,
                        handler,
                        settings=config.settings,
                        timeout=config.timeout,
                        direct=config.path_settings.mode,
                        path_settings=config.path_settings,
                        rendezvous_k=config.rendezvous_k,
                    )
                )
                if config.on_meeting is not None:
                    config.on_meeting(client)
                for peer in config.dials:
                    nursery.start_soon(_dial_forever, pump, config, client, peer)
                await trio.sleep_forever()
        except (MeshError, OSError) as exc:
            reason = str(exc) or type(exc).__name__
        finally:
            if config.on_meeting is not None:
                config.on_meeting(None)
        if trio.current_time() - started > _STABLE_SESSION_S:
            backoff.reset()
        delay = backoff.next_delay()
        log.warning("relay %s: %s; reconnecting in %.1f s", config.relay_name, reason, delay)
        await trio.sleep(delay)


async def _answered(pump: FramePump, config: TunnelConfig, session: Session) -> None:
    log.info("session with %s up (answered)", session.peer_id.short())
    with _listed(config, session):
        reason = await pump.run_link(session.peer_id, session)
    log.info("session with %s ended: %s", session.peer_id.short(), reason)


async def _dial_forever(
    pump: FramePump, config: TunnelConfig, client: Meeting, peer: PeerId
) -> None:
    backoff = _backoff()
    failures = 0
    while True:
        started = trio.current_time()
        ended = False
        try:
            reason = await _dial(pump, config, client, peer)
            ended = True
        except (MeshError, OSError) as exc:
            reason = str(exc) or type(exc).__name__
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            reason = str(exc.__cause__ or exc) or type(exc).__name__
        if trio.current_time() - started > _STABLE_SESSION_S:
            backoff.reset()
            failures = 0
        delay = backoff.next_delay()
        if ended:
            log.info("session with %s ended: %s; dialling again in %.1f s", peer.short(), reason,
                     delay)  # fmt: skip
        else:
            failures += 1
            level = logging.INFO if failures <= 1 else logging.DEBUG
            log.log(
                level, "no session with %s: %s; next try in %.1f s", peer.short(), reason, delay
            )
        await trio.sleep(delay)


async def _dial(pump: FramePump, config: TunnelConfig, client: Meeting, peer: PeerId) -> str:
    """One session with `peer`, dialled on the shared relay registration; returns when it ends.

    A peer id has one registration at the relay (a second one replaces the first), and a
    peer of a mesh both answers and dials, so every session shares the serving client.
    """
    async with open_peer_session(
        client,
        peer,
        settings=config.settings,
        path_settings=config.path_settings,
        timeout=config.timeout,
    ) as session:
        log.info("session with %s up (dialled)", peer.short())
        with _listed(config, session):
            return await pump.run_link(peer, session)


def _listed(config: TunnelConfig, session: Session) -> AbstractContextManager[None]:
    if config.registry is None:
        return nullcontext()
    return config.registry.registered(session)
