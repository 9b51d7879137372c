"""The small entry points for library users: `connect` to a peer through a relay, or
`serve` the peers on an allow-list; with `direct="auto"` sessions move onto a direct path.
The relay is one URL, a list of relays, or a registry (docs/relay-network.md).

    async with meshcore.connect(relay_url, identity, peer_id, direct="auto") as session:
        await session.send(b"hello")
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Final

import attrs
import trio

from meshcore._client import Invitation, Pairing, RelayClient, open_relay_client
from meshcore._migrator import Migrator, open_migrator
from meshcore._network import RelayNetwork, RelaySpec, open_relay_network
from meshcore._nursery import collapse_exception_group, open_hidden_nursery
from meshcore._session import (
    Session,
    handshake_as_initiator,
    handshake_as_responder,
    open_session,
)
from meshcore.errors import HandshakeError, MeshError
from meshcore.logs import describe_error, log_unexpected
from meshcore.proto.endpoint import Endpoint
from meshcore.proto.handshake import Responder
from meshcore.proto.identity import Identity, PeerId, PublicBundle
from meshcore.proto.paths import DirectMode, PathSettings
from meshcore.proto.rendezvous import DEFAULT_RENDEZVOUS_K
from meshcore.proto.session import SessionSettings

__all__ = [
    "DEFAULT_DIRECT",
    "Meeting",
    "Relays",
    "connect",
    "open_meeting",
    "open_peer_session",
    "serve",
]

log = logging.getLogger("meshcore")

DEFAULT_DIRECT: Final = DirectMode.AUTO
"""The library default for `direct=`: the relay introduces the peers and carries the session
until a direct path validates; the session moves there and falls back when it dies."""


Relays = str | RelaySpec
"""Where peers meet: one relay URL, a list of relays (`RelayEntry` values or `URL[#RELAY_ID]`
texts), or a `Registry` followed as it changes."""

Meeting = RelayClient | RelayNetwork
"""Where a peer is registered: one relay connection, or a network of them."""


@asynccontextmanager
async def open_meeting(
    relay: Relays,
    identity: Identity,
    *,
    direct: bool = True,
    candidates: Sequence[Endpoint] = (),
    local_port: int | None = None,
    timeout: float = 10.0,
    rendezvous_k: int = DEFAULT_RENDEZVOUS_K,
) -> AsyncIterator[Meeting]:
    """Register at `relay`: one URL (`URL#RELAY_ID` has the relay prove that id) gives a
    `RelayClient` (`open_relay_client`), a list or a
    registry a `RelayNetwork` (`open_relay_network`, registered at our `rendezvous_k`
    rendezvous relays). `direct` opens the shared-port listener for direct paths.

    Raises as those do; leaving the block (or cancelling it) closes every relay connection.
    """
    if isinstance(relay, str):  # one relay, `URL[#RELAY_ID]`: with the id, it is verified
        url, _, relay_id = relay.partition("#")
        async with open_relay_client(
            url,
            identity,
            relay_id=PeerId.from_text(relay_id) if relay_id else None,
            timeout=timeout,
            candidates=candidates,
            local_port=local_port,
            direct=direct,
        ) as client:
            yield client
    else:
        async with open_relay_network(
            relay,
            identity,
            rendezvous_k=rendezvous_k,
            direct=direct,
            local_port=local_port,
            candidates=candidates,
            timeout=timeout,
        ) as network:
            yield network


def _path_settings(direct: DirectMode | str, path_settings: PathSettings | None) -> PathSettings:
    mode = DirectMode.parse(direct)
    return attrs.evolve(path_settings or PathSettings(), mode=mode)


def _migrating(
    session: Session, client: Meeting, pairing: Pairing, settings: PathSettings
) -> AbstractAsyncContextManager[Migrator]:
    # also with direct="never": the migrator re-opens the relay circuit when the relay
    # restarted or the circuit was lost, so the session outlives a relay restart
    peer = (*pairing.peer_candidates, pairing.peer_observed)
    return open_migrator(session, client, peer_candidates=peer, settings=settings)


def _as_peer_id(value: PeerId | str) -> PeerId:
    return value if isinstance(value, PeerId) else PeerId.from_text(value)


@asynccontextmanager
async def connect(
    relay: Relays,
    identity: Identity,
    peer_id: PeerId | str,
    *,
    settings: SessionSettings | None = None,
    timeout: float = 10.0,
    direct: DirectMode | str = DEFAULT_DIRECT,
    path_settings: PathSettings | None = None,
    candidates: Sequence[Endpoint] = (),
    local_port: int | None = None,
    rendezvous_k: int = DEFAULT_RENDEZVOUS_K,
) -> AsyncIterator[Session]:
    """Open an end-to-end encrypted session with `peer_id` through `relay`: one relay URL,
    or a list of relays or a registry (`Relays`), where we register at our `rendezvous_k`
    rendezvous relays and ask for the peer at its own (docs/relay-network.md).

    Registers with the relay, asks it for the peer, checks the peer's keys against
    `peer_id`, runs the handshake and yields the `Session`. Traffic starts on the relay at
    once. With `direct="auto"` the session moves onto a direct connection when one validates
    and falls back to the relay when it dies; "only" keeps application data off the relay
    (the session fails without a direct path); "never" stays on the relay. `path_settings`
    holds the direct-path timers; `candidates` are extra addresses to announce; the relay
    connection, the direct listener and dials share `local_port` (None: a free one).

    Raises `RelayError` if the relay or the peer refuses (with several relays: naming every
    relay asked and what happened there), `HandshakeError` if the peer cannot be
    authenticated, `TransportClosed` if the relay cannot be reached, and `ConfigError` for a
    bad `direct`, an unusable `local_port` or a relay list with no usable entry. Leaving the
    block closes the session and the relay connections. The session outlives a relay
    restart: on a direct path untouched, on the relay by re-opening its circuit once the
    relay is back (within the session's dead timer, `SessionSettings.dead_after_s`; after it
    the session fails and says why), or at once on another relay both peers reach.

    Cancellation, like leaving the block, closes the session (the peer is told, under a
    shielded, bounded scope), then the relay connection.
    """
    pinned = _as_peer_id(peer_id)
    paths = _path_settings(direct, path_settings)
    async with open_meeting(
        relay,
        identity,
        timeout=timeout,
        candidates=candidates,
        local_port=local_port,
        direct=paths.mode is not DirectMode.NEVER,
        rendezvous_k=rendezvous_k,
    ) as client, open_peer_session(
        client, pinned, settings=settings, path_settings=paths, timeout=timeout
    ) as session:
        yield session


@asynccontextmanager
async def open_peer_session(
    client: Meeting,
    peer_id: PeerId,
    *,
    settings: SessionSettings | None = None,
    path_settings: PathSettings | None = None,
    timeout: float = 10.0,
) -> AsyncIterator[Session]:
    """`connect`, on a relay connection (or network) the caller already holds: pair with
    `peer_id`, run the handshake as initiator and yield the session, moving it between
    paths as `path_settings.mode` says (the client must have been opened with `direct=True`
    for direct paths). A mesh peer that both serves and dials uses this, since one peer id
    has one registration at a relay. Cancellation, like leaving the block, closes the session
    (the peer is told, under a shielded, bounded scope) and its circuit; the client stays.
    """
    paths = path_settings or PathSettings(mode=DEFAULT_DIRECT)
    pairing = await client.connect(peer_id, timeout=timeout)
    try:
        result = await handshake_as_initiator(
            pairing.circuit, client.identity, pairing.peer, timeout=timeout
        )
        log.info("session with %s established (initiator)", peer_id)
        async with (
            open_session(
                pairing.circuit, result, settings=settings, identity=client.identity
            ) as session,
            _migrating(session, client, pairing, paths),
        ):
            yield session
    finally:
        with trio.CancelScope(shield=True):
            await pairing.circuit.aclose("session ended")


async def serve(
    relay: Relays,
    identity: Identity,
    allow: Iterable[PeerId | str],
    handler: Callable[[Session], Awaitable[None]],
    *,
    settings: SessionSettings | None = None,
    timeout: float = 10.0,
    direct: DirectMode | str = DEFAULT_DIRECT,
    path_settings: PathSettings | None = None,
    candidates: Sequence[Endpoint] = (),
    local_port: int | None = None,
    rendezvous_k: int = DEFAULT_RENDEZVOUS_K,
    task_status: trio.TaskStatus[Meeting] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept sessions from the peers in `allow`, running `handler(session)` for each.

    Several sessions run at once, each in its own task; a handler that fails ends only its
    own session. A session that ends as sessions do (the peer closed it or ended it, it
    failed, the handshake failed) is logged in one line; a handler's unexpected error is
    logged in one line too, with its traceback at debug level. Peers not on the allow-list
    are refused through the relay.
    `relay`, `direct`, `path_settings`, `candidates`, `local_port` and `rendezvous_k` are as
    for `connect` (all sessions share the one port and listener; with several relays,
    invitations come from every relay connection). `task_status.started(client)` is called
    once registered, with the `RelayClient` or `RelayNetwork`. A lost relay connection is
    re-established in the background (see `open_relay_client`): sessions on a direct path
    carry on, relay-only ones re-open their circuit once the relay is back or on another
    relay (or fail when their dead timer runs out), and new invitations are accepted after
    the reconnect. Runs until cancelled; raises `RelayError`
    only if another registration with our peer id replaced ours. Cancellation closes every
    session (each peer is told, under a shielded, bounded scope), then the relay connection.
    """
    allowed = frozenset(_as_peer_id(p) for p in allow)
    known: dict[PeerId, PublicBundle] = {}
    responder = Responder(identity, known.get)
    paths = _path_settings(direct, path_settings)
    async with open_meeting(
        relay,
        identity,
        timeout=timeout,
        candidates=candidates,
        local_port=local_port,
        direct=paths.mode is not DirectMode.NEVER,
        rendezvous_k=rendezvous_k,
    ) as client:
        task_status.started(client)
        async with open_hidden_nursery() as nursery:
            while True:
                invitation = await client.next_invitation()
                if invitation.initiator not in allowed:
                    log.warning("refused %s: not on the allow-list", invitation.initiator)
                    await client.reject(invitation, "not on the allow-list")
                    continue
                nursery.start_soon(
                    _serve_one,
                    client,
                    invitation,
                    responder,
                    known,
                    handler,
                    settings,
                    paths,
                    timeout,
                )


async def _serve_one(
    client: Meeting,
    invitation: Invitation,
    responder: Responder,
    known: dict[PeerId, PublicBundle],
    handler: Callable[[Session], Awaitable[None]],
    settings: SessionSettings | None,
    paths: PathSettings,
    timeout: float,
) -> None:
    peer = invitation.initiator
    try:
        pairing = await client.accept(invitation, timeout=timeout)
    except MeshError as exc:
        log.warning("pairing with %s failed: %s", peer, exc)
        return
    known[peer] = pairing.peer
    try:
        result = await handshake_as_responder(pairing.circuit, responder)
        log.info("session with %s established (responder)", peer)
        async with (
            open_session(
                pairing.circuit, result, settings=settings, responder=responder
            ) as session,
            _migrating(session, client, pairing, paths),
        ):
            try:
                await handler(session)
            except BaseExceptionGroup as group:  # from the handler's own nursery
                raise collapse_exception_group(group)  # noqa: B904 - its leaf says why
    except HandshakeError as exc:
        log.warning("handshake with %s failed: %s", peer, exc)
    except MeshError as exc:
        log.warning("session with %s ended: %s", peer, exc)
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        # the session says why once, as it ends (a failure as a warning)
        log.info("session with %s ended: %s", peer, describe_error(exc))
    except trio.EndOfChannel:
        log.info("session with %s ended: the handler read past the peer's end", peer)
    except Exception as exc:
        log_unexpected(log, f"session handler for {peer} failed", exc)
    finally:
        with trio.CancelScope(shield=True):
            await pairing.circuit.aclose("session ended")
