"""The hybrid handshake over a Transport: the initiator's retrying side and the responder's
answering side, both driving the sans-IO machines of `meshcore.proto.handshake`."""

from __future__ import annotations

import trio

from meshcore._transport import Transport
from meshcore.errors import HandshakeError
from meshcore.proto import constants as C
from meshcore.proto.handshake import HandshakeResult, Initiator, Responder
from meshcore.proto.identity import Identity, PublicBundle
from meshcore.proto.packet import PacketType

__all__ = ["handshake_as_initiator", "handshake_as_responder"]


async def handshake_as_initiator(
    transport: Transport,
    identity: Identity,
    peer: PublicBundle,
    *,
    timeout: float = 2 * C.HANDSHAKE_TIMEOUT_S,
    network_id: bytes = b"",
) -> HandshakeResult:
    """Run the three-message handshake as initiator over `transport`.

    msg1 is sent again (fresh) every `HANDSHAKE_TIMEOUT_S` until msg2 arrives. Raises
    `HandshakeError` when the peer cannot be authenticated or nothing valid arrives within
    `timeout`, and `TransportClosed` if the transport closes. Cancellation abandons the
    handshake (nothing to undo: the responder keeps no state until msg3).
    """
    with trio.move_on_after(timeout):
        while True:
            initiator = Initiator(identity, peer, network_id=network_id)
            await transport.send(initiator.start(trio.current_time()))
            with trio.move_on_after(C.HANDSHAKE_TIMEOUT_S):
                while True:
                    data = await transport.receive()
                    if not data or data[0] != PacketType.HANDSHAKE_RESPONSE:
                        continue
                    msg3, result = initiator.receive_response(data, trio.current_time())
                    await transport.send(msg3)
                    return result
    raise HandshakeError(f"handshake failed: no valid response from the peer within {timeout:g} s")


async def handshake_as_responder(
    transport: Transport,
    responder: Responder,
    *,
    timeout: float = 2 * C.HANDSHAKE_TIMEOUT_S,
) -> HandshakeResult:
    """Answer handshakes on `transport` until one completes (msg3 authenticates).

    Raises `HandshakeError` if none completes within `timeout`, and `TransportClosed` if the
    transport closes. Cancellation abandons it; answers already sent commit to nothing.
    """
    with trio.move_on_after(timeout):
        while True:
            data = await transport.receive()
            if not data:
                continue
            if data[0] == PacketType.HANDSHAKE_INIT:
                try:
                    await transport.send(responder.respond(data, trio.current_time()))
                except HandshakeError:
                    continue  # junk or a replay: stateless, nothing to undo
            elif data[0] == PacketType.HANDSHAKE_CONFIRM:
                try:
                    return responder.confirm(data, trio.current_time())
                except HandshakeError:
                    continue
    raise HandshakeError(f"handshake failed: the peer did not complete it within {timeout:g} s")
