"""A peer's own WebSocket client (`dial_websocket`) against the relay's server, against
trio-websocket's server (another implementation of RFC 6455) and against raw sockets: messages
and subprotocols, refused and unfinished upgrades, close codes each way, masked frames from a
server, and cancellation."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial

import pytest
import trio

from meshcore._relayconn import serve_relay_connections
from meshcore._transport import Transport, serve_transport
from meshcore._wsconn import WsConnection
from meshcore._wsdial import dial_websocket
from meshcore.errors import ConfigError, ConnectFailed, TransportClosed
from meshcore.proto import wsframe
from meshcore.proto.endpoint import Endpoint
from meshcore.proto.wsupgrade import parse_upgrade

LIMIT_S = 10
SIZES = (0, 1, 125, 126, 65535, 65536)


async def echo(connection: Transport) -> None:
    while True:
        for message in await connection.receive_batch():
            await connection.send(message)


async def serve_ours(
    nursery: trio.Nursery, handler: Callable[[WsConnection], Awaitable[None]], **options: object
) -> str:
    endpoints: list[Endpoint] = await nursery.start(
        lambda task_status: serve_relay_connections(
            handler, "127.0.0.1", 0, task_status=task_status, **options
        )
    )
    return f"ws://127.0.0.1:{endpoints[0].port}/"


async def serve_raw(
    nursery: trio.Nursery, handler: Callable[[trio.SocketStream], Awaitable[None]]
) -> str:
    listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
    return f"ws://127.0.0.1:{listeners[0].socket.getsockname()[1]}/"


async def read_head(stream: trio.SocketStream) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await stream.receive_some(4096)
        if not chunk:
            break
        data += chunk
    return data


async def test_messages_round_trip_with_the_relays_server(nursery: trio.Nursery) -> None:
    url = await serve_ours(nursery, echo, subprotocols=("meshcore-credit.1",))
    with trio.fail_after(LIMIT_S):
        async with dial_websocket(url, subprotocols=("x.1", "meshcore-credit.1")) as ws:
            assert ws.subprotocol == "meshcore-credit.1"
            for size in SIZES:
                await ws.send(bytes([size % 251]) * size)
                assert await ws.receive() == bytes([size % 251]) * size
            await ws.send_many([b"a", b"b", b"c"])
            got: list[bytes] = []
            while len(got) < 3:
                got += await ws.receive_batch()
            assert got == [b"a", b"b", b"c"]


async def test_messages_round_trip_with_trio_websockets_server(nursery: trio.Nursery) -> None:
    endpoints: list[Endpoint] = await nursery.start(
        lambda task_status: serve_transport(
            echo, "127.0.0.1", 0, subprotocols=("meshcore-credit.1",), task_status=task_status
        )
    )
    url = f"ws://127.0.0.1:{endpoints[0].port}/"
    with trio.fail_after(LIMIT_S):
        async with dial_websocket(url, subprotocols=("meshcore-credit.1",)) as ws:
            assert ws.subprotocol == "meshcore-credit.1"
            for size in SIZES:
                await ws.send(bytes([size % 7]) * size)
                assert await ws.receive() == bytes([size % 7]) * size
        async with dial_websocket(url) as ws:
            assert ws.subprotocol is None


async def test_close_reasons_travel_both_ways(nursery: trio.Nursery) -> None:
    server_saw: list[str] = []
    saw = trio.Event()

    async def handler(connection: WsConnection) -> None:
        if await connection.receive() == b"close yourself":
            await connection.aclose("maintenance, come back later")
            return
        with pytest.raises(TransportClosed) as info:
            await connection.receive()
        server_saw.append(info.value.reason)
        saw.set()

    url = await serve_ours(nursery, handler)
    with trio.fail_after(LIMIT_S):
        async with dial_websocket(url) as ws:
            await ws.send(b"close yourself")
            with pytest.raises(TransportClosed, match="maintenance, come back later"):
                await ws.receive()
        async with dial_websocket(url) as ws:
            await ws.send(b"wait")
            await ws.aclose("client is done")
        await saw.wait()
    assert server_saw == ["client is done"]


async def test_leaving_the_block_by_an_error_or_a_cancel_says_so_to_the_server(
    nursery: trio.Nursery,
) -> None:
    reasons: list[str] = []
    done = trio.Event()

    async def handler(connection: WsConnection) -> None:
        with pytest.raises(TransportClosed) as info:
            await connection.receive()
        reasons.append(info.value.reason)
        if len(reasons) == 2:
            done.set()

    url = await serve_ours(nursery, handler)
    with trio.fail_after(LIMIT_S):
        with pytest.raises(RuntimeError):
            async with dial_websocket(url):
                raise RuntimeError("a bug in the block")
        with trio.CancelScope() as scope:
            async with dial_websocket(url):
                scope.cancel()
                await trio.sleep_forever()
        await done.wait()
    assert sorted(reasons) == [
        "cancelled (WebSocket code 1001 GOING_AWAY)",
        "closed after a local error (WebSocket code 1011 INTERNAL_ERROR)",
    ]


async def test_a_refused_upgrade_names_the_url_and_the_status(nursery: trio.Nursery) -> None:
    async def not_found(stream: trio.SocketStream) -> None:
        await read_head(stream)
        await stream.send_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")

    url = await serve_raw(nursery, not_found)
    with trio.fail_after(LIMIT_S), pytest.raises(ConnectFailed, match="HTTP 404") as info:
        async with dial_websocket(url):
            pass
    assert url in str(info.value)


async def test_an_answer_with_the_wrong_accept_token_is_refused(nursery: trio.Nursery) -> None:
    async def impostor(stream: trio.SocketStream) -> None:
        await read_head(stream)
        await stream.send_all(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
        )

    url = await serve_raw(nursery, impostor)
    with trio.fail_after(LIMIT_S), pytest.raises(ConnectFailed, match="does not match our key"):
        async with dial_websocket(url):
            pass


async def test_a_server_that_closes_or_never_answers_fails_the_dial(
    nursery: trio.Nursery,
) -> None:
    async def hang_up(stream: trio.SocketStream) -> None:
        await read_head(stream)

    async def silent(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()

    closing = await serve_raw(nursery, hang_up)
    with trio.fail_after(LIMIT_S), pytest.raises(ConnectFailed, match="closed during"):
        async with dial_websocket(closing):
            pass
    quiet = await serve_raw(nursery, silent)
    with trio.fail_after(LIMIT_S), pytest.raises(ConnectFailed, match="did not finish in time"):
        async with dial_websocket(quiet, connect_timeout=0.2):
            pass


async def test_unreachable_and_malformed_urls() -> None:
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()  # nothing listens there now
    with trio.fail_after(LIMIT_S), pytest.raises(ConnectFailed, match="cannot connect"):
        async with dial_websocket(f"ws://127.0.0.1:{port}/"):
            pass
    with pytest.raises(ConfigError, match="wss://"):
        async with dial_websocket("wss://relay.test/"):
            pass


async def test_a_masked_frame_from_the_server_closes_with_1002(nursery: trio.Nursery) -> None:
    answered = trio.Event()
    close_reasons: list[str] = []

    async def bad_server(stream: trio.SocketStream) -> None:
        head = await read_head(stream)
        key = head.split(b"Sec-WebSocket-Key: ")[1].split(b"\r\n")[0]
        upgrade = parse_upgrade(
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n",
            (),
        )
        await stream.send_all(upgrade.response)
        await stream.send_all(wsframe.encode_frame(wsframe.OP_BINARY, b"hi", b"abcd"))
        reader = wsframe.FrameReader(masked=True, max_message=1000)
        while not close_reasons:
            data = await stream.receive_some(4096)
            if not data:
                break
            close_reasons.extend(
                e.reason for e in reader.feed(data) if isinstance(e, wsframe.Close)
            )
        answered.set()

    url = await serve_raw(nursery, bad_server)
    with trio.fail_after(LIMIT_S):
        async with dial_websocket(url, close_timeout=0.5) as ws:
            with pytest.raises(TransportClosed, match="masked frame from a server"):
                await ws.receive()
        await answered.wait()
    assert close_reasons == ["protocol error: masked frame from a server"]


async def test_a_message_over_the_limit_closes_with_1009(nursery: trio.Nursery) -> None:
    async def big(connection: WsConnection) -> None:
        await connection.send(b"x" * 2000)
        await trio.sleep_forever()

    url = await serve_ours(nursery, big, max_message=4096)
    with trio.fail_after(LIMIT_S):
        async with dial_websocket(url, max_message=1000, close_timeout=0.5) as ws:
            with pytest.raises(TransportClosed, match="over 1000 bytes"):
                await ws.receive()
