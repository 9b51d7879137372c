"""`WsConnection` closing many at once and admitting at a pace: a final write that reaches
a peer that never answers, the rest of a final write a full socket did not take, the cut
that ends a blocked receive, and the admission gate that holds new connections in the
listen backlog until one settles."""

from __future__ import annotations

import struct
from collections.abc import Awaitable, Callable

import trio

from meshcore._relayconn import AdmissionGate, serve_relay_connections
from meshcore._wsconn import WsConnection
from meshcore.errors import TransportClosed
from meshcore.proto.endpoint import Endpoint

Handler = Callable[[WsConnection], Awaitable[None]]
LIMIT_S = 10
UPGRADE = (
    b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)
BIG = 1 << 20


async def serve(nursery: trio.Nursery, handler: Handler, **options: object) -> int:
    endpoints: list[Endpoint] = await nursery.start(
        lambda task_status: serve_relay_connections(
            handler, "127.0.0.1", 0, task_status=task_status, **options
        )
    )
    return endpoints[0].port


async def upgraded(port: int) -> tuple[trio.SocketStream, bytearray]:
    """A raw client past the upgrade, and what came behind the 101."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(UPGRADE)
    buf = bytearray()
    while (end := buf.find(b"\r\n\r\n")) < 0:
        chunk = await stream.receive_some(65536)
        assert chunk, "the server closed during the upgrade"
        buf += chunk
    assert buf.startswith(b"HTTP/1.1 101 ")
    del buf[: end + 4]
    return stream, buf


async def read_to_eof(stream: trio.SocketStream, buf: bytearray) -> list[tuple[int, bytes]]:
    """Every server frame (opcode, payload) until the server ends the TCP connection."""
    while chunk := await stream.receive_some(1 << 16):
        buf += chunk
    frames, at = [], 0
    while at < len(buf):
        opcode, size, at = buf[at] & 0x0F, buf[at + 1] & 0x7F, at + 2
        if size == 126:
            size, at = struct.unpack_from(">H", buf, at)[0], at + 2
        elif size == 127:
            size, at = struct.unpack_from(">Q", buf, at)[0], at + 8
        frames.append((opcode, bytes(buf[at : at + size])))
        at += size
    return frames


def close_frame(payload: bytes) -> tuple[int, str]:
    return struct.unpack(">H", payload[:2])[0], payload[2:].decode()


async def test_a_final_write_reaches_a_peer_that_never_answers_and_the_cut_ends_the_receive(
    nursery: trio.Nursery,
) -> None:
    ended: list[str] = []
    done = trio.Event()

    async def finish_at_once(connection: WsConnection) -> None:
        async def receive() -> None:
            try:
                await connection.receive()
            except TransportClosed as exc:
                ended.append(exc.reason)
            done.set()

        async with trio.open_nursery() as inner:
            inner.start_soon(receive)
            await trio.testing.wait_all_tasks_blocked()  # the receive waits on the socket
            assert connection.send_final_nowait([b"last", b"words"], "going away")
            connection.cut()

    port = await serve(nursery, finish_at_once)
    with trio.fail_after(LIMIT_S):
        stream, buf = await upgraded(port)
        async with stream:  # never answers the close: the cut ends it anyway
            frames = await read_to_eof(stream, buf)
            await done.wait()
    assert frames[:2] == [(0x2, b"last"), (0x2, b"words")]
    assert frames[2][0] == 0x8 and close_frame(frames[2][1]) == (1000, "going away")
    assert len(frames) == 3
    assert ended == ["going away"]  # the receive ended with the connection's close reason


async def test_what_a_full_socket_did_not_take_of_a_final_write_aclose_sends_first(
    nursery: trio.Nursery,
) -> None:
    messages = [bytes([n]) * (BIG - 16) for n in range(16)]  # 16 MiB: more than TCP buffers
    results: list[bool] = []
    sent = trio.Event()

    async def finish_big(connection: WsConnection) -> None:
        results.append(connection.send_final_nowait(messages, "that was all"))
        sent.set()
        await connection.aclose()  # writes the rest, then waits for the peer's close

    port = await serve(nursery, finish_big, max_message=BIG)
    with trio.fail_after(LIMIT_S):
        stream, buf = await upgraded(port)
        async with stream:
            await sent.wait()  # the client has not read a byte yet
            frames = await read_to_eof(stream, buf)
    assert results == [False]  # the socket could not take 16 MiB at once
    assert [payload for opcode, payload in frames[:-1]] == messages
    assert frames[-1][0] == 0x8 and close_frame(frames[-1][1]) == (1000, "that was all")


async def test_the_gate_holds_new_connections_in_the_backlog_until_one_settles(
    nursery: trio.Nursery,
) -> None:
    gate = AdmissionGate(2)
    served: list[WsConnection] = []
    settle_first, third_served, left = trio.Event(), trio.Event(), trio.Event()

    async def hold(connection: WsConnection) -> None:
        served.append(connection)
        if len(served) == 3:
            third_served.set()
        if len(served) == 1:
            await settle_first.wait()
            connection.settled()
            connection.settled()  # idempotent: counted once
        try:
            while True:  # until the client leaves (TransportClosed)
                await connection.receive()
        finally:
            left.set()

    port = await serve(nursery, hold, gate=gate)
    with trio.fail_after(LIMIT_S):
        first, _ = await upgraded(port)
        second, _ = await upgraded(port)
        assert gate.settling == 2
        third = await trio.open_tcp_stream("127.0.0.1", port)  # the kernel takes it
        await third.send_all(UPGRADE)
        with trio.move_on_after(0.3):  # a bounded look for what must not happen
            assert await third.receive_some(4096) == b"", "served past the gate's limit"
        assert len(served) == 2
        settle_first.set()  # the first registered: the third is taken in
        assert (await third.receive_some(4096)).startswith(b"HTTP/1.1 101 ")
        await third_served.wait()
        assert gate.settling == 2
        await second.aclose()  # an ended connection leaves the gate too: room for one more
        await left.wait()
        fourth, _ = await upgraded(port)
        await first.aclose()
        await third.aclose()
        await fourth.aclose()


async def test_every_listener_and_the_queue_stop_when_told(nursery: trio.Nursery) -> None:
    # host "": one listener per address family, each accepting in its own task
    stop, served = trio.Event(), trio.Event()

    async def note(connection: WsConnection) -> None:
        served.set()
        await connection.receive()

    endpoints: list[Endpoint] = await nursery.start(
        lambda task_status: serve_relay_connections(
            note, "", 0, stop_accepting=stop, gate=AdmissionGate(4), accept_queue=8,
            task_status=task_status,
        )
    )  # fmt: skip
    port = endpoints[0].port
    with trio.fail_after(LIMIT_S):
        stream, _ = await upgraded(port)
        await served.wait()
        stop.set()
        while True:  # the listeners close on the server's next turns
            try:
                probe = await trio.open_tcp_stream("127.0.0.1", port)
            except OSError:
                break
            await probe.aclose()
            await trio.sleep(0.01)
        await stream.aclose()
