"""WebSocketTransport over loopback TCP: messages, limits, close reasons, back-pressure,
cancellation, and the shared-port sockets direct paths are dialled from."""

from __future__ import annotations

import errno
import logging
from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.testing
import trio_websocket
from freeports import free_port_outside_ephemeral_range

from meshcore._transport import (
    WebSocketTransport,
    open_transport,
    serve_transport,
    wrap_stream_transport,
)
from meshcore.errors import ConfigError, ConnectFailed, TransportClosed
from meshcore.proto.endpoint import Endpoint
from meshcore.testing.memory import memory_transport_pair

Handler = Callable[[WebSocketTransport], Awaitable[None]]
LIMIT_S = 10  # every test's bound; each normally takes milliseconds


async def serve(nursery: trio.Nursery, handler: Handler, **options: object) -> str:
    """Start a server on a free loopback port; return its URL."""
    endpoints: list[Endpoint] = await nursery.start(
        lambda task_status: serve_transport(
            handler, "127.0.0.1", 0, task_status=task_status, **options
        )
    )
    return f"ws://127.0.0.1:{endpoints[0].port}/"


async def echo(transport: WebSocketTransport) -> None:
    while True:
        await transport.send(await transport.receive())


def own_nurseries() -> list[trio.Nursery]:
    """Nurseries open under the test's task: a transport's hidden one shows up while it runs
    (and a nursery cannot close while any of its tasks still runs)."""
    return list(trio.lowlevel.current_task().child_nurseries)


async def free_port() -> int:
    """A loopback port with nothing listening on it (nor likely to be taken meanwhile)."""
    await trio.lowlevel.checkpoint()
    return free_port_outside_ephemeral_range()


# --- messages ------------------------------------------------------------------------------


async def test_round_trip(nursery: trio.Nursery) -> None:
    url = await serve(nursery, echo)
    with trio.fail_after(LIMIT_S):
        async with open_transport(url) as transport:
            await transport.send(b"ping")
            assert await transport.receive() == b"ping"


async def test_large_messages_round_trip_intact(nursery: trio.Nursery) -> None:
    big = 4 * 1024 * 1024
    url = await serve(nursery, echo, max_message=big)
    with trio.fail_after(LIMIT_S):
        async with open_transport(url, max_message=big) as transport:
            for size in (64 * 1024, 64 * 1024 + 1, 1024 * 1024):
                message = bytes(range(256)) * (size // 256) + b"\x07" * (size % 256)
                await transport.send(message)
                assert await transport.receive() == message


async def test_empty_message_is_a_message(nursery: trio.Nursery) -> None:
    url = await serve(nursery, echo)
    with trio.fail_after(LIMIT_S):
        async with open_transport(url) as transport:
            await transport.send(b"")
            assert await transport.receive() == b""


async def test_addresses_match_across_the_connection(nursery: trio.Nursery) -> None:
    seen: list[tuple[Endpoint | None, Endpoint | None]] = []

    async def record(transport: WebSocketTransport) -> None:
        seen.append((transport.local_address, transport.remote_address))
        await transport.send(b"ready")

    url = await serve(nursery, record)
    with trio.fail_after(LIMIT_S):
        async with open_transport(url) as transport:
            await transport.receive()
            assert seen == [(transport.remote_address, transport.local_address)]
            assert transport.remote_address == Endpoint("127.0.0.1", int(url.split(":")[2][:-1]))


async def test_a_transport_without_batching_sends_and_receives_batches_one_by_one() -> None:
    # the Transport defaults: send_many is send in order, receive_batch one message
    a, b = memory_transport_pair(8)
    with trio.fail_after(LIMIT_S):
        await a.send_many([b"one", b"two", b"three"])
        assert [await b.receive_batch() for _ in range(3)] == [[b"one"], [b"two"], [b"three"]]
        await a.aclose("done")
        with pytest.raises(TransportClosed, match="done"):
            await b.receive_batch()


async def test_websocket_batches_arrive_in_order(nursery: trio.Nursery) -> None:
    url = await serve(nursery, echo)
    with trio.fail_after(LIMIT_S):
        async with open_transport(url) as transport:
            await transport.send_many([b"%d" % i for i in range(50)])
            got: list[bytes] = []
            while len(got) < 50:
                got += await transport.receive_batch()
            assert got == [b"%d" % i for i in range(50)]


async def test_a_websocket_batch_is_one_write_and_is_read_as_one_batch() -> None:
    left, right = trio.testing.memory_stream_pair()
    writes: list[int] = []
    write = left.send_all

    async def counted(data: bytes | bytearray | memoryview) -> None:
        writes.append(len(data))
        await write(data)

    left.send_all = counted  # type: ignore[method-assign]
    received: list[list[bytes]] = []

    async def server() -> None:
        async with wrap_stream_transport(right, client=False) as transport:
            await sent.wait()
            await trio.testing.wait_all_tasks_blocked()
            received.append(await transport.receive_batch())

    sent = trio.Event()
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server)
            async with wrap_stream_transport(left, client=True) as sender:
                before = len(writes)
                await sender.send_many([b"%d" % i for i in range(20)])
                assert len(writes) == before + 1  # twenty messages, one write
                sent.set()
                while not received:
                    await trio.testing.wait_all_tasks_blocked()
    assert received == [[b"%d" % i for i in range(20)]]


async def test_a_text_message_inside_a_batch_ends_it_and_the_connection() -> None:
    left, right = trio.testing.memory_stream_pair()
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            got: list[list[bytes]] = []

            async def server() -> None:
                async with wrap_stream_transport(right, client=False) as transport:
                    await sent.wait()
                    await trio.testing.wait_all_tasks_blocked()
                    got.append(await transport.receive_batch())
                    with pytest.raises(TransportClosed, match="text message"):
                        await transport.receive_batch()

            sent = trio.Event()
            nursery.start_soon(server)
            raw = await trio_websocket.wrap_client_stream(nursery, left, "test", "/")
            for message in (b"one", b"two", "three", b"four"):
                await raw.send_message(message)
            sent.set()
            with pytest.raises(trio_websocket.ConnectionClosed) as info:
                await raw.get_message()
            assert info.value.reason is not None and info.value.reason.code == 1003
    assert got == [[b"one", b"two"]]


# --- close reasons ---------------------------------------------------------------------------


async def test_client_close_reason_reaches_the_server(nursery: trio.Nursery) -> None:
    got = trio.Event()
    reasons: list[str] = []

    async def wait_for_close(transport: WebSocketTransport) -> None:
        with pytest.raises(TransportClosed) as info:
            await transport.receive()
        reasons.append(info.value.reason)
        got.set()

    url = await serve(nursery, wait_for_close)
    with trio.fail_after(LIMIT_S):
        async with open_transport(url) as transport:
            await transport.aclose("client is done")
        await got.wait()
    assert reasons == ["client is done"]
    assert transport.close_reason == "client is done"
    assert transport.close_code == 1000


async def test_server_close_reason_reaches_the_client_after_queued_messages(
    nursery: trio.Nursery,
) -> None:
    async def say_goodbye(transport: WebSocketTransport) -> None:
        for i in range(3):
            await transport.send(b"%d" % i)
        await transport.aclose("maintenance, come back later")

    url = await serve(nursery, say_goodbye)
    with trio.fail_after(LIMIT_S):
        async with open_transport(url) as transport:
            await trio.testing.wait_all_tasks_blocked()
            assert [await transport.receive() for _ in range(3)] == [b"0", b"1", b"2"]
            with pytest.raises(TransportClosed, match="maintenance, come back later"):
                await transport.receive()
            with pytest.raises(TransportClosed, match="maintenance"):
                await transport.send(b"too late")
    assert transport.close_code == 1000


async def test_long_close_reason_is_cut_on_the_wire_but_kept_locally(
    nursery: trio.Nursery,
) -> None:
    reasons: list[str] = []
    got = trio.Event()

    async def wait_for_close(transport: WebSocketTransport) -> None:
        with pytest.raises(TransportClosed) as info:
            await transport.receive()
        reasons.append(info.value.reason)
        got.set()

    reason = "é" * 100  # 200 UTF-8 bytes; a close frame carries at most 123
    url = await serve(nursery, wait_for_close)
    with trio.fail_after(LIMIT_S):
        async with open_transport(url) as transport:
            await transport.aclose(reason)
        await got.wait()
    assert transport.close_reason == reason
    assert reasons == ["é" * 61]


async def test_oversized_message_is_refused_with_a_reason_naming_the_limit(
    nursery: trio.Nursery,
) -> None:
    server_saw: list[str] = []

    async def receive_once(transport: WebSocketTransport) -> None:
        with pytest.raises(TransportClosed) as info:
            await transport.receive()
        server_saw.append(info.value.reason)

    url = await serve(nursery, receive_once, max_message=1000)
    with trio.fail_after(LIMIT_S):
        async with open_transport(url, max_message=10_000) as transport:
            await transport.send(b"x" * 1001)
            with pytest.raises(TransportClosed, match="1000 bytes") as info:
                await transport.receive()
    assert "1009" in info.value.reason
    assert transport.close_code == 1009
    assert len(server_saw) == 1
    assert "1000 bytes" in server_saw[0]


async def test_bytearray_and_memoryview_are_sent_as_bytes(nursery: trio.Nursery) -> None:
    url = await serve(nursery, echo)
    with trio.fail_after(LIMIT_S):
        async with open_transport(url) as transport:
            await transport.send(bytearray(b"array"))  # type: ignore[arg-type]
            await transport.send(memoryview(b"view"))  # type: ignore[arg-type]
            assert [await transport.receive() for _ in range(2)] == [b"array", b"view"]


async def test_sending_over_our_own_limit_is_a_caller_error(nursery: trio.Nursery) -> None:
    url = await serve(nursery, echo)
    with trio.fail_after(LIMIT_S):
        async with open_transport(url, max_message=100) as transport:
            with pytest.raises(ValueError, match="101 bytes"):
                await transport.send(b"x" * 101)
            await transport.send(b"still open")
            assert await transport.receive() == b"still open"


async def test_text_message_is_refused_after_earlier_binary_ones(nursery: trio.Nursery) -> None:
    server_got: list[bytes | str] = []
    done = trio.Event()

    async def collect(transport: WebSocketTransport) -> None:
        try:
            while True:
                server_got.append(await transport.receive())
        except TransportClosed as exc:
            server_got.append(exc.reason)
            done.set()

    url = await serve(nursery, collect)
    with trio.fail_after(LIMIT_S):
        async with trio_websocket.open_websocket_url(url) as raw:
            await raw.send_message(b"binary first")
            await raw.send_message("then text")
            with pytest.raises(trio_websocket.ConnectionClosed) as info:
                await raw.get_message()
        await done.wait()
    assert info.value.reason is not None
    assert info.value.reason.code == 1003
    assert server_got[0] == b"binary first"
    assert "text message" in str(server_got[1])


# --- connection errors -----------------------------------------------------------------------


async def test_refused_connection_names_the_url() -> None:
    url = f"ws://127.0.0.1:{await free_port()}/relay"
    with trio.fail_after(LIMIT_S), pytest.raises(ConnectFailed) as info:
        async with open_transport(url):
            pytest.fail("connected to a closed port")
    assert url in str(info.value)
    assert info.value.errno == errno.ECONNREFUSED


async def test_refused_connection_from_a_local_port_names_the_url() -> None:
    url = f"ws://127.0.0.1:{await free_port()}/"
    with trio.fail_after(LIMIT_S), pytest.raises(ConnectFailed, match=url) as info:
        async with open_transport(url, local_port=await free_port()):
            pytest.fail("connected to a closed port")
    assert info.value.errno == errno.ECONNREFUSED


async def test_connect_timeout_names_the_url() -> None:
    url = f"ws://127.0.0.1:{await free_port()}/"
    with pytest.raises(ConnectFailed, match=f"{url}: no TCP connection within 0 s"):
        async with open_transport(url, connect_timeout=0):
            pytest.fail("connected with no time to do it")


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("http://127.0.0.1:1/", "scheme 'http'"),
        ("wss://127.0.0.1:1/", "scheme 'wss'"),
        ("ws:///path", "no host"),
        ("ws://127.0.0.1:notaport/", "malformed"),
    ],
)
async def test_bad_url_is_a_config_error_naming_it(url: str, complaint: str) -> None:
    with pytest.raises(ConfigError, match=complaint) as info:
        async with open_transport(url):
            pytest.fail("accepted a bad URL")
    assert repr(url) in str(info.value)


async def test_server_that_never_upgrades_times_out_naming_the_url(
    nursery: trio.Nursery,
) -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    nursery.start_soon(trio.serve_listeners, lambda stream: trio.sleep_forever(), listeners)
    url = f"ws://127.0.0.1:{listeners[0].socket.getsockname()[1]}/"
    with trio.fail_after(LIMIT_S), pytest.raises(ConnectFailed, match="did not finish in time"):
        async with open_transport(url, connect_timeout=0.2):
            pytest.fail("upgrade cannot succeed")


async def test_refused_upgrade_names_the_http_status(nursery: trio.Nursery) -> None:
    async def reject(request: trio_websocket.WebSocketRequest) -> None:
        await request.reject(403)

    server = await nursery.start(trio_websocket.serve_websocket, reject, "127.0.0.1", 0, None)
    url = f"ws://127.0.0.1:{server.port}/"
    with trio.fail_after(LIMIT_S), pytest.raises(ConnectFailed, match="HTTP 403"):
        async with open_transport(url):
            pytest.fail("upgrade was refused")


async def test_server_drops_a_client_that_never_upgrades(nursery: trio.Nursery) -> None:
    url = await serve(nursery, echo, handshake_timeout=0.2)
    port = int(url.split(":")[2][:-1])
    with trio.fail_after(LIMIT_S):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        assert await stream.receive_some() == b""
        await stream.aclose()


async def test_listening_on_a_busy_port_is_a_config_error(nursery: trio.Nursery) -> None:
    url = await serve(nursery, echo)
    port = int(url.split(":")[2][:-1])
    with pytest.raises(ConfigError, match=f"127.0.0.1:{port}"):
        await nursery.start(serve_transport, echo, "127.0.0.1", port)


# --- flow control and concurrency -----------------------------------------------------------


async def test_slow_reader_pushes_back_on_the_sender_with_bounded_memory(
    nursery: trio.Nursery,
) -> None:
    size, total, queue = 64 * 1024, 400, 4
    server_side: list[WebSocketTransport] = []
    release = trio.Event()
    received: list[bytes] = []

    async def read_when_released(transport: WebSocketTransport) -> None:
        server_side.append(transport)
        await release.wait()
        for _ in range(total):
            received.append(await transport.receive())

    url = await serve(nursery, read_when_released, receive_queue=queue)
    sent = 0
    with trio.fail_after(LIMIT_S):
        async with open_transport(url) as transport, trio.open_nursery() as inner:

            async def send_all() -> None:
                nonlocal sent
                for i in range(total):
                    await transport.send(i.to_bytes(4, "big") * (size // 4))
                    sent += 1

            inner.start_soon(send_all)
            await trio.testing.wait_all_tasks_blocked(cushion=0.05)
            blocked_at = sent
            assert blocked_at < total  # the sender waits: ~26 MB never left its hands
            # The receiver buffered exactly what it was allowed (trio-websocket's queue).
            assert server_side[0]._ws._recv_channel.statistics().current_buffer_used == queue
            release.set()
    assert sent == total
    assert blocked_at < total
    assert [m[:4] for m in received] == [i.to_bytes(4, "big") for i in range(total)]


async def test_pings_are_answered_while_the_application_is_not_reading(
    nursery: trio.Nursery,
) -> None:
    async def never_read(transport: WebSocketTransport) -> None:
        await trio.sleep_forever()

    url = await serve(nursery, never_read)
    with trio.fail_after(LIMIT_S):
        async with trio_websocket.open_websocket_url(url) as raw:
            for _ in range(8):  # trio-websocket alone stops answering after 2 unread
                await raw.send_message(b"unread")
            with trio.fail_after(2):
                await raw.ping()


async def test_many_concurrent_connections(nursery: trio.Nursery) -> None:
    url = await serve(nursery, echo)

    async def client(i: int) -> None:
        async with open_transport(url) as transport:
            for j in range(10):
                await transport.send(b"%d:%d" % (i, j))
                assert await transport.receive() == b"%d:%d" % (i, j)

    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as clients:
            for i in range(60):
                clients.start_soon(client, i)


@pytest.mark.allow_traceback  # an unexpected error is logged with its traceback
async def test_crashing_handler_closes_only_its_own_connection(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    async def fragile_echo(transport: WebSocketTransport) -> None:
        while True:
            message = await transport.receive()
            if message == b"crash":
                raise RuntimeError("handler bug")
            await transport.send(message)

    url = await serve(nursery, fragile_echo)
    with trio.fail_after(LIMIT_S):
        async with open_transport(url) as good, open_transport(url) as bad:
            await bad.send(b"crash")
            with pytest.raises(TransportClosed, match="1011"):
                await bad.receive()
            await good.send(b"still here")
            assert await good.receive() == b"still here"
    assert any(
        record.levelno == logging.ERROR and record.exc_info is not None for record in caplog.records
    )


# --- cancellation -----------------------------------------------------------------------------


async def test_cancelled_receive_loses_nothing_and_keeps_the_transport(
    nursery: trio.Nursery,
) -> None:
    url = await serve(nursery, echo)
    with trio.fail_after(LIMIT_S):
        async with open_transport(url) as transport:
            with trio.move_on_after(0.01):
                await transport.receive()
            await transport.send(b"after")
            assert await transport.receive() == b"after"
            assert transport.close_reason is None


async def test_cancel_during_send_closes_with_a_reason_and_leaks_no_task(
    nursery: trio.Nursery,
) -> None:
    server_saw: list[str] = []
    server_done = trio.Event()

    async def read_late(transport: WebSocketTransport) -> None:
        await trio.testing.wait_all_tasks_blocked(cushion=0.05)  # let the sender jam
        try:
            while True:
                await transport.receive()
        except TransportClosed as exc:
            server_saw.append(exc.reason)
            server_done.set()

    url = await serve(nursery, read_late, receive_queue=1)
    before = own_nurseries()
    with trio.fail_after(LIMIT_S):
        async with open_transport(url) as transport:
            assert own_nurseries() != before  # the transport's reader runs under us
            with trio.CancelScope() as scope:

                async def cancel_when_jammed() -> None:
                    await trio.testing.wait_all_tasks_blocked(cushion=0.02)
                    scope.cancel()

                nursery.start_soon(cancel_when_jammed)
                while True:
                    await transport.send(b"x" * 65536)
            assert scope.cancelled_caught
            assert transport.close_reason is not None
            assert "interrupted" in transport.close_reason
            with pytest.raises(TransportClosed, match="interrupted"):
                await transport.send(b"after")
        await server_done.wait()
    assert own_nurseries() == before
    assert "connection lost" in server_saw[0]


async def test_outer_cancel_while_receiving_closes_and_the_server_sees_it(
    nursery: trio.Nursery,
) -> None:
    server_saw: list[str] = []
    server_done = trio.Event()

    async def wait_for_close(transport: WebSocketTransport) -> None:
        try:
            await transport.receive()
        except TransportClosed as exc:
            server_saw.append(exc.reason)
            server_done.set()

    url = await serve(nursery, wait_for_close)
    before = own_nurseries()
    with trio.fail_after(LIMIT_S):
        with trio.CancelScope() as scope:
            async with open_transport(url) as transport:
                assert own_nurseries() != before
                nursery.start_soon(lambda: _cancel_when_blocked(scope))
                await transport.receive()
        assert scope.cancelled_caught
        assert transport.close_reason is not None
        await server_done.wait()
    assert own_nurseries() == before
    assert server_saw


async def test_outer_cancel_still_sends_a_close_frame(nursery: trio.Nursery) -> None:
    # a program shutting down by cancellation closes its connections properly (code 1001)
    server_saw: list[str] = []
    server_done = trio.Event()

    async def wait_for_close(transport: WebSocketTransport) -> None:
        try:
            await transport.receive()
        except TransportClosed as exc:
            server_saw.append(exc.reason)
            server_done.set()

    url = await serve(nursery, wait_for_close)
    with trio.fail_after(LIMIT_S):
        with trio.CancelScope() as scope:
            async with open_transport(url) as transport:
                nursery.start_soon(lambda: _cancel_when_blocked(scope))
                await transport.receive()
        await server_done.wait()
    assert transport.close_code == 1001
    assert server_saw == ["cancelled (WebSocket code 1001 GOING_AWAY)"]


async def _cancel_when_blocked(scope: trio.CancelScope) -> None:
    await trio.testing.wait_all_tasks_blocked(cushion=0.02)
    scope.cancel()


async def test_error_in_the_block_closes_with_code_1011_and_is_raised_alone(
    nursery: trio.Nursery,
) -> None:
    server_saw: list[str] = []
    server_done = trio.Event()

    async def wait_for_close(transport: WebSocketTransport) -> None:
        try:
            await transport.receive()
        except TransportClosed as exc:
            server_saw.append(exc.reason)
            server_done.set()

    url = await serve(nursery, wait_for_close)
    with trio.fail_after(LIMIT_S):
        with pytest.raises(KeyError):
            async with open_transport(url):
                raise KeyError("user bug")
        await server_done.wait()
    assert "1011" in server_saw[0]


def test_public_api_is_pinned() -> None:
    import meshcore._transport as module

    assert sorted(module.__all__) == [
        "Transport",
        "WebSocketTransport",
        "open_reuseport_listener",
        "open_tcp_socket_from",
        "open_transport",
        "parse_ws_url",
        "serve_transport",
        "wrap_stream_transport",
    ]
