"""The metrics endpoint: a tiny HTTP/1.1 responder rendering prometheus-client's text format
from collectors that read the relay's and the sessions' own counters at scrape time."""

from __future__ import annotations

import sys

import attrs
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families
from test_direct import PATHS, pair, running_relay, wait_path

from meshcore import (
    ConfigError,
    MetricsServer,
    PeerCollector,
    RelayCollector,
    SessionRegistry,
    parse_metrics_address,
    serve_metrics,
)
from meshcore.proto.paths import DirectMode

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def http(server: MetricsServer, request: bytes) -> tuple[str, dict[str, str], bytes]:
    """Send raw `request`, return (status line, headers, body) of the answer."""
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    async with stream:
        await stream.send_all(request)
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status, *fields = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, v in (f.split(":", 1) for f in fields)}
    return status, headers, body


async def scrape(server: MetricsServer) -> Samples:
    status, headers, body = await http(server, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == "HTTP/1.1 200 OK"
    assert headers["content-type"].startswith("text/plain; version=")
    assert int(headers["content-length"]) == len(body)
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[name, tuple(sorted(labels.items()))]


# --- the address ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("9090", ("127.0.0.1", 9090)),
        ("0.0.0.0:9090", ("0.0.0.0", 9090)),
        ("[::1]:0", ("::1", 0)),
        ("metrics.internal:9100", ("metrics.internal", 9100)),
    ],
)
def test_a_bare_port_is_loopback_and_anything_else_is_explicit(
    text: str, address: tuple[str, int]
) -> None:
    assert parse_metrics_address(text) == address


@pytest.mark.parametrize("text", ["", ":9090", "host", "::1:9090", "[::1]9090", "x:70000", "x:-1"])
def test_malformed_addresses_say_what_form_is_expected(text: str) -> None:
    with pytest.raises(ValueError, match="PORT or HOST:PORT"):
        parse_metrics_address(text)


# --- HTTP -----------------------------------------------------------------------------------


async def test_only_get_and_head_of_metrics_are_served(nursery: trio.Nursery) -> None:
    server: MetricsServer = await nursery.start(serve_metrics, "0", [RelayCollector()])
    assert server.url == f"http://127.0.0.1:{server.port}/metrics"
    with trio.fail_after(10):
        samples = await scrape(server)
        assert value(samples, "meshcore_build_info", version="0.1.0") == 1
        status, headers, body = await http(server, b"HEAD /metrics HTTP/1.0\r\n\r\n")
        assert status == "HTTP/1.1 200 OK" and body == b"" and int(headers["content-length"]) > 0
        status, _, _ = await http(server, b"GET /metrics?x=1 HTTP/1.1\r\n\r\n")
        assert status == "HTTP/1.1 200 OK"
        status, _, _ = await http(server, b"GET / HTTP/1.1\r\n\r\n")
        assert status == "HTTP/1.1 404 Not Found"
        status, headers, _ = await http(server, b"POST /metrics HTTP/1.1\r\n\r\n")
        assert status == "HTTP/1.1 405 Method Not Allowed" and headers["allow"] == "GET, HEAD"
        status, _, _ = await http(server, b"BREW /metrics\r\n\r\n")
        assert status == "HTTP/1.1 400 Bad Request"
        status, _, _ = await http(server, b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 9000)
        assert status == "HTTP/1.1 431 Request Header Fields Too Large"


async def test_a_request_that_never_ends_times_out(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    server: MetricsServer = await nursery.start(serve_metrics, "0", [RelayCollector()])
    with trio.fail_after(60):
        status, _, _ = await http(server, b"GET /metrics HTTP/1.1\r\n")
    assert status == "HTTP/1.1 408 Request Timeout"


async def test_metrics_need_the_extra_and_say_which(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    with pytest.raises(ConfigError, match=r"pip install 'meshcore\[metrics\]'"):
        await nursery.start(serve_metrics, "0", [RelayCollector()])


async def test_an_address_in_use_is_a_config_error(nursery: trio.Nursery) -> None:
    server: MetricsServer = await nursery.start(serve_metrics, "0", [RelayCollector()])
    with pytest.raises(ConfigError, match=r"cannot serve metrics on 127\.0\.0\.1"):
        await nursery.start(serve_metrics, str(server.port), [RelayCollector()])


# --- what the relay and the peers export -----------------------------------------------------


async def test_the_relay_exports_its_tables_and_counters(nursery: trio.Nursery) -> None:
    never = attrs.evolve(PATHS, mode=DirectMode.NEVER)
    with trio.fail_after(30):
        async with running_relay() as relay, pair(relay, paths=never) as (a, b):
            collector = RelayCollector(relay)
            server: MetricsServer = await nursery.start(serve_metrics, "0", [collector])
            for _ in range(20):
                await a.session.send(b"x" * 500)
            for _ in range(20):
                await b.session.receive()
            await a.session.wait_acknowledged()
            samples = await scrape(server)
            forwarded = sum(c.bytes_ab + c.bytes_ba for c in relay.circuit_stats())
    assert value(samples, "meshcore_relay_connections") == 2
    assert value(samples, "meshcore_relay_peers") == 2
    assert value(samples, "meshcore_relay_circuits") == 1
    assert value(samples, "meshcore_relay_registrations_total") == 2
    assert value(samples, "meshcore_relay_pairings_total") == 1
    assert value(samples, "meshcore_relay_forwarded_bytes_total") == forwarded >= 20 * 500
    assert value(samples, "meshcore_relay_challenge_cpu_seconds_count") == 2
    assert value(samples, "meshcore_relay_challenge_cpu_seconds_bucket", le="+Inf") == 2
    assert value(samples, "meshcore_relay_challenge_cpu_seconds_sum") > 0


async def test_a_peer_exports_its_sessions_and_keeps_counting_after_they_end(
    nursery: trio.Nursery,
) -> None:
    registry = SessionRegistry()
    server: MetricsServer = await nursery.start(
        serve_metrics, "0", [PeerCollector(registry)]
    )
    with trio.fail_after(30):
        async with running_relay() as relay, pair(relay) as (a, b):
            with registry.registered(a.session):
                await wait_path(a.session, b.session, path="direct")
                for _ in range(10):
                    await a.session.send(b"y" * 1000)
                await a.session.wait_acknowledged()
                live = await scrape(server)
            ended = await scrape(server)
    assert value(live, "meshcore_peer_sessions", path="direct") == 1
    assert value(live, "meshcore_peer_sessions", path="relay") == 0
    label = {"peer": a.session.peer_id.to_text(), "path": "direct"}
    assert 0 < value(live, "meshcore_peer_session_rtt_seconds", **label) < 1
    sent = value(live, "meshcore_peer_path_bytes_total", path="direct", direction="sent")
    assert sent >= 10 * 1000
    assert value(live, "meshcore_peer_path_bytes_total", path="relay", direction="sent") > 0
    assert value(live, "meshcore_peer_migrations_total", kind="relay_to_direct") == 1
    assert value(live, "meshcore_peer_message_bytes_total", direction="sent") == 10_000
    assert value(ended, "meshcore_peer_sessions", path="direct") == 0
    for key, before in live.items():
        if key[0].endswith("_total"):
            assert ended[key] >= before, key  # counters never go down when a session ends
