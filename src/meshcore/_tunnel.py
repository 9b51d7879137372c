"""The layer-2 tunnel runtime: pumps frames between a TAP device and one session per peer,
switching them by MAC address, and keeps a session up with every configured peer.

Pairing: for each pair of peers exactly one session exists; the peer with the lower id dials,
the other answers (its allow-list is the configured peers with lower ids). A failed session
or relay connection is retried with jittered exponential backoff; the device stays up.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractContextManager, AsyncExitStack, asynccontextmanager, nullcontext
from functools import partial

import attrs
import trio

from meshcore._api import Meeting, Relays, open_peer_session, serve
from meshcore._control import SessionRegistry
from meshcore._datagramport import open_datagram_port
from meshcore._iothread import IoThread, open_io_thread
from meshcore._nursery import open_hidden_nursery
from meshcore._pump import FramePump, LinkStats
from meshcore._registry import Registry
from meshcore._session import Session
from meshcore.errors import MeshError
from meshcore.proto.backoff import Backoff
from meshcore.proto.constants import TUNNEL_BACKOFF_MAX_S, TUNNEL_BACKOFF_MIN_S
from meshcore.proto.identity import Identity, PeerId
from meshcore.proto.paths import PathSettings
from meshcore.proto.rendezvous import DEFAULT_RENDEZVOUS_K
from meshcore.proto.session import SessionSettings

__all__ = ["FramePump", "LinkStats", "TunnelConfig", "run_tunnel"]

log = logging.getLogger("meshcore.tunnel")

_STABLE_SESSION_S = 10.0
"""A session that lived this long resets its peer's backoff."""


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
    datagrams: bool = True
    """On direct paths (and through relays that forward datagrams), send frames that fit
    one UDP datagram by UDP on the shared port number (docs/datagram.md); False: every
    frame goes by the reliable session."""

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
    async with (
        open_io_thread("meshcore-data", role="bulk") as io,
        open_io_thread("meshcore-device", role="latency") as device_io,
    ):
        pump = FramePump(fd, vnet_header_bytes, unique, io=io, device_io=device_io)
        async with open_hidden_nursery() as nursery:
            nursery.start_soon(pump.run_device_reader)
            nursery.start_soon(_keep_relay, pump, config, device_io)
            task_status.started(pump)
            await trio.sleep_forever()


async def _keep_relay(pump: FramePump, config: TunnelConfig, io: IoThread) -> None:
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
                async with _datagram_port(pump, config, client, io):
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


@asynccontextmanager
async def _datagram_port(
    pump: FramePump, config: TunnelConfig, client: Meeting, io: IoThread
) -> AsyncIterator[None]:
    """The UDP twin of the shared port, for the sessions' datagram paths while `client`
    lives; without it (turned off, or the UDP port is taken) every frame goes reliably."""
    port = client.local_port
    if not config.datagrams or port is None:
        yield
        return
    async with AsyncExitStack() as stack:
        try:
            dport = await stack.enter_async_context(open_datagram_port(port, io=io))
        except OSError as exc:
            log.warning(
                "UDP port %d: %s; direct paths carry every frame by TCP (no datagram path)",
                port,
                exc.strerror or exc,
            )
            dport = None
        pump.datagram_port = dport
        try:
            yield
        finally:
            pump.datagram_port = None


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
