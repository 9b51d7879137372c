"""Two live Sessions with each other over an in-memory pair, in one call: the real handshake
and frames, over whatever middle a test puts between them (`memory.LossyNetwork`, a hostile
filter). For tests of protocols built on a Session."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from meshcore._handshake import handshake_as_initiator, handshake_as_responder
from meshcore._session import Session, open_session
from meshcore.errors import HandshakeError
from meshcore.proto.handshake import HandshakeResult, Responder
from meshcore.proto.identity import Identity
from meshcore.proto.session import SessionSettings
from meshcore.testing.memory import MessageFilter, memory_transport_pair

__all__ = ["open_session_pair"]

_HANDSHAKE_TIMEOUT_S = 30.0


@asynccontextmanager
async def open_session_pair(
    *,
    filter: MessageFilter | None = None,
    settings: SessionSettings | None = None,
    identities: tuple[Identity, Identity] | None = None,
    capacity: int = 1024,
) -> AsyncIterator[tuple[Session, Session]]:
    """Run a handshake between two peers over `memory_transport_pair(capacity, filter=...)`
    and yield their sessions `(initiator, responder)`.

    `identities` are the two peers (fresh ones if None). Both sessions rekey as `open_session`
    describes. Leaving the block closes both sessions, then the transports; cancellation
    does the same (the closes are shielded and bounded). Raises `HandshakeError` if the
    handshake does not complete within 30 s (of trio's clock, so a `MockClock` makes that
    instant).
    """
    first, second = (
        identities
        if identities is not None
        else (
            Identity.generate(),
            Identity.generate(),
        )
    )
    ta, tb = memory_transport_pair(capacity, filter=filter)
    responder = Responder(second, {first.peer_id: first.public}.get)
    results: dict[str, HandshakeResult] = {}
    failures: list[HandshakeError] = []

    async def handshake(side: str, done: trio.CancelScope) -> None:
        try:
            if side == "a":
                results[side] = await handshake_as_initiator(
                    ta, first, second.public, timeout=_HANDSHAKE_TIMEOUT_S
                )
            else:
                results[side] = await handshake_as_responder(
                    tb, responder, timeout=_HANDSHAKE_TIMEOUT_S
                )
        except HandshakeError as exc:
            failures.append(exc)
            done.cancel()  # the other side would only wait for its own timeout

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(handshake, "a", nursery.cancel_scope)
            nursery.start_soon(handshake, "b", nursery.cancel_scope)
        if failures:
            raise failures[0]
        async with (
            open_session(ta, results["a"], settings=settings, identity=first) as a,
            open_session(tb, results["b"], settings=settings, responder=responder) as b,
        ):
            yield a, b
    finally:
        with trio.CancelScope(shield=True):
            await ta.aclose("session pair closed")
            await tb.aclose("session pair closed")
