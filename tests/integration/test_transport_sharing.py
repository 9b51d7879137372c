"""WebSocket transports that share one local port (the relay connection, the direct
listener and dials: docs/direct.md), and transports over streams we made ourselves."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from test_transport import LIMIT_S, echo, free_port, serve

from meshcore._transport import (
    WebSocketTransport,
    open_reuseport_listener,
    open_tcp_socket_from,
    open_transport,
    wrap_stream_transport,
)
from meshcore.errors import ConnectFailed, TransportClosed
from meshcore.proto.endpoint import Endpoint

# --- shared ports and wrapped streams --------------------------------------------------------


async def test_two_outbound_sockets_share_one_local_port(nursery: trio.Nursery) -> None:
    servers = [await trio.open_tcp_listeners(0, host="127.0.0.1") for _ in range(2)]
    for listeners in servers:
        nursery.start_soon(trio.serve_listeners, lambda s: trio.sleep_forever(), listeners)
    port = await free_port()
    with trio.fail_after(LIMIT_S):
        streams = [
            await open_tcp_socket_from(
                port, Endpoint("127.0.0.1", listeners[0].socket.getsockname()[1])
            )
            for listeners in servers
        ]
    assert [s.socket.getsockname()[1] for s in streams] == [port, port]
    for stream in streams:
        await stream.aclose()


async def test_listener_and_outbound_websocket_share_one_port(nursery: trio.Nursery) -> None:
    relay_url = await serve(nursery, echo)
    # on the wildcard address, as the shared-port listener is: beside a listener bound to
    # 127.0.0.1, Linux 6.18 refuses the dial's wildcard bind to the same port about half the
    # time (EADDRINUSE), while beside a wildcard listener it always shares the port
    listener = await open_reuseport_listener("0.0.0.0", 0)
    port = listener.socket.getsockname()[1]
    with trio.fail_after(LIMIT_S):
        async with open_transport(relay_url, local_port=port) as relay:
            assert relay.local_address == Endpoint("127.0.0.1", port)
            # The relay observes our shared port, and the listener still accepts on it.
            dialer = await trio.open_tcp_stream("127.0.0.1", port)
            accepted = await listener.accept()
            await dialer.send_all(b"direct")
            assert await accepted.receive_some() == b"direct"
            await relay.send(b"relayed")
            assert await relay.receive() == b"relayed"
    for resource in (dialer, accepted, listener):
        await resource.aclose()


async def test_websocket_over_a_socket_we_connected_ourselves(nursery: trio.Nursery) -> None:
    listener = await open_reuseport_listener("127.0.0.1", 0)
    listen_port = listener.socket.getsockname()[1]
    server_done = trio.Event()

    async def accept_and_echo() -> None:
        stream = await listener.accept()
        async with wrap_stream_transport(stream, client=False) as transport:
            await echo_until_closed(transport)
        server_done.set()

    nursery.start_soon(accept_and_echo)
    with trio.fail_after(LIMIT_S):
        stream = await open_tcp_socket_from(await free_port(), Endpoint("127.0.0.1", listen_port))
        async with wrap_stream_transport(stream, client=True) as transport:
            assert transport.remote_address == Endpoint("127.0.0.1", listen_port)
            await transport.send(b"direct hello")
            assert await transport.receive() == b"direct hello"
        await server_done.wait()
    await listener.aclose()


async def test_wrapping_a_non_socket_stream_works_without_addresses() -> None:
    left, right = trio.testing.memory_stream_pair()
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:

            async def server() -> None:
                async with wrap_stream_transport(right, client=False) as transport:
                    await echo_until_closed(transport)

            nursery.start_soon(server)
            async with wrap_stream_transport(left, client=True) as transport:
                assert transport.local_address is None
                await transport.send(b"in memory")
                assert await transport.receive() == b"in memory"


async def test_wrapping_fails_clearly_when_the_other_side_hangs_up() -> None:
    left, right = trio.testing.memory_stream_pair()
    await right.aclose()
    with (
        trio.fail_after(LIMIT_S),
        pytest.raises(ConnectFailed, match="closed during the WebSocket upgrade"),
    ):
        async with wrap_stream_transport(left, client=True):
            pytest.fail("no upgrade happened")


async def echo_until_closed(transport: WebSocketTransport) -> None:
    try:
        await echo(transport)
    except TransportClosed:
        pass
