"""netcheck against real relays on loopback: one shared local port, the address each relay
saw, the latency, relays that cannot be reached or are too old to answer; and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import trio
from test_direct import free_port, running_relay

from meshcore import ConfigError, NatMapping, RelayConfig, netcheck
from meshcore._transport import WebSocketTransport, serve_transport
from meshcore.proto.endpoint import Endpoint
from meshcore.proto.wire import Error, ErrorCode, encode_control

BIN = Path(sys.executable).parent


async def test_two_relays_on_loopback_see_this_host_as_it_is() -> None:
    with trio.fail_after(30):
        async with running_relay() as one, running_relay() as two:
            report = await netcheck([one.url, two.url])
            echoes = [r.counters().matchmaker.address_echoes for r in (one, two)]
            registered = [r.stats().peers for r in (one, two)]
    first, second = report.probes
    assert first.error is None and second.error is None
    assert first.local is not None and first.local.port == second.local.port  # one shared port
    assert first.observed == first.local and second.observed == second.local
    assert first.latency_s is not None and 0 < first.latency_s < 1
    assert report.ipv4.mapping is NatMapping.NONE
    assert report.ipv4.varies_by_destination is False
    assert echoes == [3, 3] and registered == [0, 0]  # asked three times, never registered


async def test_a_relay_on_ipv6_is_asked_over_ipv6_from_the_same_port() -> None:
    with trio.fail_after(30):
        async with (
            running_relay() as four,
            running_relay(RelayConfig(host="::1", port=0)) as six,
        ):
            assert six.url.startswith("ws://[::1]:")
            report = await netcheck([four.url, six.url])
    v4, v6 = report.probes
    assert v6.observed is not None and v6.observed.host == "::1"
    assert v4.local is not None and v6.local is not None and v4.local.port == v6.local.port
    assert report.ipv4.reachable and report.ipv6.reachable
    assert report.ipv6.mapping is NatMapping.NONE
    assert report.verdict == report.ipv4.verdict


async def test_the_local_port_asked_for_is_the_one_used() -> None:
    port = free_port()
    with trio.fail_after(30):
        async with running_relay() as relay:
            report = await netcheck([relay.url], local_port=port)
    assert report.probes[0].observed == Endpoint("127.0.0.1", port)


async def test_a_relay_that_cannot_be_reached_is_a_probe_with_an_error() -> None:
    dead = f"ws://127.0.0.1:{free_port()}/"
    with trio.fail_after(30):
        async with running_relay() as relay:
            report = await netcheck([relay.url, dead, relay.url])
    assert len(report.probes) == 2  # the same URL twice is asked once
    assert report.probes[1].error is not None and "cannot connect" in report.probes[1].error
    assert report.ipv4.reachable
    assert report.ipv4.varies_by_destination is None  # one relay address answered


async def test_an_older_relay_is_recognised(nursery: trio.Nursery) -> None:
    async def old_relay(transport: WebSocketTransport) -> None:
        await transport.receive()
        reason = "malformed message: unknown control message type 24"
        await transport.send(encode_control(Error(ErrorCode.BAD_MESSAGE, reason)))

    (endpoint,) = await nursery.start(partial(serve_transport, old_relay, "127.0.0.1", 0))
    with trio.fail_after(30):
        report = await netcheck([f"ws://{endpoint}/"])
    assert report.probes[0].error == (
        "this relay does not answer netcheck's question (an older meshcore-relay?)"
    )
    assert not report.ipv4.reachable


async def test_netcheck_needs_a_relay() -> None:
    with pytest.raises(ConfigError, match="--relay URL"):
        await netcheck([])


async def test_the_command_prints_the_report_and_json() -> None:
    with trio.fail_after(60):
        async with running_relay() as one, running_relay() as two:
            argv = [str(BIN / "meshcore-peer"), "netcheck", "--relay", one.url, "--relay", two.url]
            text = await trio.run_process(argv, capture_stdout=True, capture_stderr=True)
            as_json = await trio.run_process([*argv, "--json"], capture_stdout=True)
    lines = text.stdout.decode().splitlines()
    assert lines[0] == "Report:" and lines[1].startswith("  * IPv4: yes, 127.0.0.1:")
    assert any(line.startswith("  * Direct paths: no NAT") for line in lines)
    assert sum(1 for line in lines if "sees us at 127.0.0.1:" in line) == 2
    data = json.loads(as_json.stdout)
    assert data["ipv4"]["mapping"] == "none" and len(data["relays"]) == 2


def test_the_command_without_a_relay_says_what_to_pass() -> None:
    done = subprocess.run(
        [BIN / "meshcore-peer", "netcheck"], capture_output=True, timeout=60, env={"PATH": ""}
    )
    assert done.returncode == 2
    assert b"no relay to ask: pass --relay URL" in done.stderr
