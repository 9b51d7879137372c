"""The relay's own WebSocket server connections (`WsConnection`) against the library's
client (trio-websocket) and a raw socket: messages both ways, the upgrade and its refusals,
limits, pings, close reasons each way, a handler that fails, and a client that never
upgrades."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import pytest
import trio
import trio_websocket

from meshcore._relayconn import serve_relay_connections
from meshcore._transport import open_transport
from meshcore._wsconn import WsConnection
from meshcore.errors import TransportClosed
from meshcore.proto.endpoint import Endpoint

Handler = Callable[[WsConnection], Awaitable[None]]
LIMIT_S = 10
UPGRADE = (
    b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


async def serve(nursery: trio.Nursery, handler: Handler, **options: object) -> int:
    endpoints: list[Endpoint] = await nursery.start(
        lambda task_status: serve_relay_connections(
            handler, "127.0.0.1", 0, task_status=task_status, **options
        )
    )
    return endpoints[0].port


async def echo(connection: WsConnection) -> None:
    while True:
        for message in await connection.receive_batch():
            await connection.send(message)


def frame(payload: bytes, opcode: int = 0x2) -> bytes:
    """A masked client frame (mask key 0: the payload as is)."""
    assert len(payload) < 126
    return bytes((0x80 | opcode, 0x80 | len(payload))) + b"\0\0\0\0" + payload


async def read_until(stream: trio.SocketStream, marker: bytes) -> bytes:
    data = b""
    while marker not in data:
        chunk = await stream.receive_some(4096)
        if not chunk:
            break
        data += chunk
    return data


async def test_messages_round_trip_with_the_librarys_client(nursery: trio.Nursery) -> None:
    port = await serve(nursery, echo, subprotocols=("meshcore-credit.1",))
    with trio.fail_after(LIMIT_S):
        async with open_transport(
            f"ws://127.0.0.1:{port}/", subprotocols=("meshcore-credit.1",)
        ) as transport:
            assert transport.subprotocol == "meshcore-credit.1"
            for size in (0, 1, 125, 126, 65535, 65536):
                await transport.send(bytes([size % 251]) * size)
                assert await transport.receive() == bytes([size % 251]) * size
            await transport.send_many([b"a", b"b", b"c"])
            assert [await transport.receive() for _ in range(3)] == [b"a", b"b", b"c"]


async def test_the_server_sees_the_peers_address_and_the_subprotocol_is_optional(
    nursery: trio.Nursery,
) -> None:
    seen: list[tuple[Endpoint | None, Endpoint | None, str | None]] = []

    async def note(connection: WsConnection) -> None:
        seen.append((connection.remote_address, connection.local_address, connection.subprotocol))

    port = await serve(nursery, note, subprotocols=("meshcore-credit.1",))
    with trio.fail_after(LIMIT_S):
        async with open_transport(f"ws://127.0.0.1:{port}/") as transport:
            with pytest.raises(TransportClosed):
                await transport.receive()
            assert seen == [(transport.local_address, transport.remote_address, None)]


async def test_close_reasons_travel_both_ways(nursery: trio.Nursery) -> None:
    server_saw: list[str] = []
    saw_close = trio.Event()

    async def first_then_close(connection: WsConnection) -> None:
        if await connection.receive() == b"close yourself":
            await connection.send(b"bye")
            await connection.aclose("maintenance, come back later")
            return
        with pytest.raises(TransportClosed) as info:
            await connection.receive()
        server_saw.append(info.value.reason)
        saw_close.set()

    port = await serve(nursery, first_then_close)
    url = f"ws://127.0.0.1:{port}/"
    with trio.fail_after(LIMIT_S):
        async with open_transport(url) as transport:
            await transport.send(b"close yourself")
            assert await transport.receive() == b"bye"
            with pytest.raises(TransportClosed, match="maintenance, come back later"):
                await transport.receive()
            assert transport.close_code == 1000
        async with open_transport(url) as transport:
            await transport.send(b"wait")
            await transport.aclose("client is done")
        await saw_close.wait()
    assert server_saw == ["client is done"]


async def test_an_oversized_message_closes_with_1009_naming_the_limit(
    nursery: trio.Nursery,
) -> None:
    server_saw: list[str] = []

    async def receive_once(connection: WsConnection) -> None:
        with pytest.raises(TransportClosed) as info:
            await connection.receive()
        server_saw.append(info.value.reason)

    port = await serve(nursery, receive_once, max_message=1000)
    with trio.fail_after(LIMIT_S):
        async with open_transport(f"ws://127.0.0.1:{port}/", max_message=10_000) as transport:
            await transport.send(b"x" * 1001)
            with pytest.raises(TransportClosed, match="1000 bytes") as info:
                await transport.receive()
    assert "1009" in info.value.reason and transport.close_code == 1009
    assert server_saw and "1000 bytes" in server_saw[0]


async def test_a_text_message_is_refused_with_1003_after_earlier_binary_ones(
    nursery: trio.Nursery,
) -> None:
    got: list[bytes | str] = []
    closed = trio.Event()

    async def collect(connection: WsConnection) -> None:
        try:
            while True:
                got.append(await connection.receive())
        except TransportClosed as exc:
            got.append(exc.reason)
            closed.set()

    port = await serve(nursery, collect)
    with trio.fail_after(LIMIT_S):
        async with trio_websocket.open_websocket_url(f"ws://127.0.0.1:{port}/") as raw:
            await raw.send_message(b"binary first")
            await raw.send_message("then text")
            with pytest.raises(trio_websocket.ConnectionClosed) as info:
                await raw.get_message()
        await closed.wait()
    assert info.value.reason is not None and info.value.reason.code == 1003
    assert got[0] == b"binary first" and "text message" in str(got[1])


async def test_pings_are_answered_and_frames_behind_the_request_are_kept(
    nursery: trio.Nursery,
) -> None:
    port = await serve(nursery, echo)
    with trio.fail_after(LIMIT_S):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(UPGRADE + frame(b"early"))  # not waiting for the 101
            head = await read_until(stream, b"\x82\x05early")
            assert head.startswith(b"HTTP/1.1 101 ")
            await stream.send_all(frame(b"are you there", opcode=0x9))
            assert (await read_until(stream, b"are you there")).startswith(b"\x8a\x0d")


@pytest.mark.parametrize(
    "request_head",
    [
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        b"this is not HTTP\r\n\r\n",
        UPGRADE.replace(b"Version: 13", b"Version: 7"),
    ],
    ids=["plain GET", "garbage", "old version"],
)
async def test_a_request_that_is_no_upgrade_gets_an_http_refusal_and_no_handler(
    nursery: trio.Nursery, request_head: bytes
) -> None:
    handled: list[WsConnection] = []

    async def note(connection: WsConnection) -> None:
        handled.append(connection)

    port = await serve(nursery, note)
    with trio.fail_after(LIMIT_S):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(request_head)
            answer = await read_until(stream, b"\r\n\r\n")
            assert answer.startswith((b"HTTP/1.1 400 ", b"HTTP/1.1 426 "))
            assert await stream.receive_some(100) == b""  # and the connection is closed
    assert handled == []


async def test_a_client_that_never_upgrades_is_dropped_after_the_handshake_timeout(
    nursery: trio.Nursery,
) -> None:
    port = await serve(nursery, echo, handshake_timeout=0.2)
    with trio.fail_after(LIMIT_S):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            assert await stream.receive_some(100) == b""


@pytest.mark.allow_traceback  # the handler's bug is logged with its traceback, as it should be
async def test_a_failing_handler_loses_only_its_connection(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    async def picky(connection: WsConnection) -> None:
        if await connection.receive() == b"boom":
            raise RuntimeError("a bug")
        await echo(connection)

    port = await serve(nursery, picky)
    url = f"ws://127.0.0.1:{port}/"
    with caplog.at_level(logging.ERROR, "meshcore.transport"), trio.fail_after(LIMIT_S):
        async with open_transport(url) as healthy, open_transport(url) as doomed:
            await healthy.send(b"first")
            await doomed.send(b"boom")
            with pytest.raises(TransportClosed) as info:
                await doomed.receive()
            assert doomed.close_code == 1011 and "local error" in info.value.reason
            await healthy.send(b"still here")
            assert await healthy.receive() == b"still here"
    assert any("the connection handler failed" in r.getMessage() for r in caplog.records)


async def test_once_told_to_stop_accepting_new_connections_are_refused_and_old_ones_go_on(
    nursery: trio.Nursery,
) -> None:
    stop = trio.Event()
    port = await serve(nursery, echo, stop_accepting=stop)
    url = f"ws://127.0.0.1:{port}/"
    with trio.fail_after(LIMIT_S):
        async with open_transport(url) as transport:
            stop.set()
            while True:  # the listener closes on the server's next turn
                try:
                    stream = await trio.open_tcp_stream("127.0.0.1", port)
                except OSError:
                    break
                await stream.aclose()
                await trio.sleep(0.01)
            await transport.send(b"still served")
            assert await transport.receive() == b"still served"


async def test_messages_that_came_with_the_close_frame_are_delivered_before_the_close(
    nursery: trio.Nursery,
) -> None:
    got: list[bytes | str] = []
    done = trio.Event()

    async def collect(connection: WsConnection) -> None:
        try:
            while True:
                got.append(await connection.receive())
        except TransportClosed as exc:
            got.append(exc.reason)
            done.set()

    port = await serve(nursery, collect)
    close = frame((1000).to_bytes(2, "big") + b"bye", opcode=0x8)
    with trio.fail_after(LIMIT_S):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(UPGRADE)
            assert (await read_until(stream, b"\r\n\r\n")).startswith(b"HTTP/1.1 101 ")
            await stream.send_all(frame(b"last words") + frame(b"and more") + close)  # one write
            await done.wait()
    assert got == [b"last words", b"and more", "bye"]
