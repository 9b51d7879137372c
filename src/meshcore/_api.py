"""The small entry points for library users: `connect` to a peer through a relay, or
`serve` the peers on an allow-list.

    async with meshcore.connect(relay_url, identity, peer_id) as session:
        await session.send(b"hello")
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager

import trio

from meshcore._client import Invitation, RelayClient, open_relay_client
from meshcore._session import (
    Session,
    handshake_as_initiator,
    handshake_as_responder,
    open_session,
)
from meshcore.errors import HandshakeError, MeshError
from meshcore.proto.handshake import Responder
from meshcore.proto.identity import Identity, PeerId, PublicBundle
from meshcore.proto.session import SessionSettings

__all__ = ["connect", "serve"]

log = logging.getLogger("meshcore")


def _as_peer_id(value: PeerId | str) -> PeerId:
    return value if isinstance(value, PeerId) else PeerId.from_text(value)


@asynccontextmanager
async def connect(
    relay_url: str,
    identity: Identity,
    peer_id: PeerId | str,
    *,
    settings: SessionSettings | None = None,
    timeout: float = 10.0,
) -> AsyncIterator[Session]:
    """Open an end-to-end encrypted session with `peer_id` through the relay at `relay_url`.

    Registers with the relay, asks it for the peer, checks the peer's keys against
    `peer_id`, runs the handshake and yields the `Session`. Raises `RelayError` if the relay
    or the peer refuses, `HandshakeError` if the peer cannot be authenticated, and
    `TransportClosed` if the relay cannot be reached. Leaving the block closes the session
    and the relay connection.
    """
    pinned = _as_peer_id(peer_id)
    async with open_relay_client(relay_url, identity, timeout=timeout) as client:
        pairing = await client.connect(pinned, timeout=timeout)
        try:
            result = await handshake_as_initiator(pairing.circuit, identity, pairing.peer)
            log.info("session with %s established (initiator)", pinned)
            async with open_session(
                pairing.circuit, result, settings=settings, identity=identity
            ) as session:
                yield session
        finally:
            with trio.CancelScope(shield=True):
                await pairing.circuit.aclose("session ended")


async def serve(
    relay_url: str,
    identity: Identity,
    allow: Iterable[PeerId | str],
    handler: Callable[[Session], Awaitable[None]],
    *,
    settings: SessionSettings | None = None,
    timeout: float = 10.0,
    task_status: trio.TaskStatus[RelayClient] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept sessions from the peers in `allow`, running `handler(session)` for each.

    Several sessions run at once, each in its own task; a handler that fails ends only its
    own session (logged). Peers not on the allow-list are refused through the relay.
    `task_status.started(client)` is called once registered. Runs until cancelled or until
    the relay connection ends (then raises `RelayError`).
    """
    allowed = frozenset(_as_peer_id(p) for p in allow)
    known: dict[PeerId, PublicBundle] = {}
    responder = Responder(identity, known.get)
    async with open_relay_client(relay_url, identity, timeout=timeout) as client:
        task_status.started(client)
        async with trio.open_nursery() as nursery:
            while True:
                invitation = await client.next_invitation()
                if invitation.initiator not in allowed:
                    log.warning("refused %s: not on the allow-list", invitation.initiator)
                    await client.reject(invitation, "not on the allow-list")
                    continue
                nursery.start_soon(
                    _serve_one, client, invitation, responder, known, handler, settings, timeout
                )


async def _serve_one(
    client: RelayClient,
    invitation: Invitation,
    responder: Responder,
    known: dict[PeerId, PublicBundle],
    handler: Callable[[Session], Awaitable[None]],
    settings: SessionSettings | None,
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
        async with open_session(
            pairing.circuit, result, settings=settings, responder=responder
        ) as session:
            await handler(session)
    except HandshakeError as exc:
        log.warning("handshake with %s failed: %s", peer, exc)
    except MeshError as exc:
        log.warning("session with %s ended: %s", peer, exc)
    except (trio.BrokenResourceError, trio.ClosedResourceError, trio.EndOfChannel) as exc:
        log.info("session with %s ended: %s", peer, exc or type(exc).__name__)
    except Exception:
        log.exception("session handler for %s failed", peer)
    finally:
        with trio.CancelScope(shield=True):
            await pairing.circuit.aclose("session ended")
