"""The relay's Prometheus metrics: a collector that reads a running relay's tables and
counters (`RelayServer.stats()`, `.counters()`) at each scrape. docs/observability.md
describes every metric; names follow Prometheus's conventions (prefix `meshcore_relay_`, base
units, counters end in `_total`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Final

from meshcore._metrics import build_info, counter, gauge, histogram
from meshcore._relay import RelayServer
from meshcore.proto.relayudp import DROP_REASONS

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

__all__ = ["RelayCollector"]

_P: Final = "meshcore_relay_"


class RelayCollector:
    """Exports a relay's metrics. Give it the `RelayServer` now or later (`.server = ...`):
    until then it exports only `meshcore_build_info`."""

    def __init__(self, server: RelayServer | None = None) -> None:
        self.server = server

    def collect(self) -> Iterator[Metric]:
        """The metric families, read now (on the trio thread, between two events)."""
        yield build_info()
        server = self.server
        if server is None:
            return
        stats, counts = server.stats(), server.counters()
        mm = counts.matchmaker
        yield gauge(_P + "connections", "Open control connections (WebSockets).", stats.connections)
        yield gauge(_P + "registering_connections", "Connections in HELLO/AUTH.", stats.pending)
        yield gauge(_P + "peers", "Registered peers.", stats.peers)
        yield gauge(_P + "invitations", "Invitations waiting for an answer.", stats.invites)
        yield gauge(_P + "circuits", "Open circuits.", stats.circuits)
        yield gauge(
            _P + "tracked_addresses", "Addresses with a rate-limit bucket.", stats.tracked_addresses
        )
        yield gauge(_P + "queued_bytes", "Relayed bytes queued towards peers.", stats.queued_bytes)
        yield counter(
            _P + "registrations_total",
            "Peers that answered the challenge and registered.",
            mm.registrations,
        )
        yield counter(
            _P + "pairings_total", "Invitations accepted (each opens a circuit).", mm.pairings
        )
        yield counter(_P + "circuit_reopens_total", "Circuits re-opened (CircuitOpen).", mm.reopens)
        yield counter(
            _P + "address_echoes_total",
            "ObserveAddress questions answered (netcheck).",
            mm.address_echoes,
        )
        yield counter(
            _P + "forwarded_bytes_total", "Payload bytes forwarded on circuits.", mm.forwarded_bytes
        )
        yield counter(
            _P + "forwarded_frames_total", "Frames forwarded on circuits.", mm.forwarded_frames
        )
        yield counter(
            _P + "refusals_total",
            "Requests refused, by request (connection, pairing, circuit) and reason.",
            labels=("request", "reason"),
            samples=sorted(mm.refusals.items()),
        )
        drops = {**counts.dropped, "unknown_circuit": mm.unknown_circuit_frames}
        yield _by_reason("dropped_frames_total", "Relayed frames dropped, by reason.", drops)
        yield _by_reason(
            "connection_closes_total", "Control connections that ended, by reason.", mm.closes
        )
        yield _by_reason("circuit_closes_total", "Circuits closed, by reason.", mm.circuit_closes)
        udp = counts.udp
        yield gauge(_P + "udp_circuits", "Circuits with UDP tokens.", stats.udp_circuits)
        yield counter(
            _P + "udp_received_packets_total", "Packets at the relay's UDP port.", udp.received
        )
        yield counter(
            _P + "udp_forwarded_packets_total",
            "Sealed datagrams forwarded by UDP.",
            udp.forwarded,
        )
        yield counter(
            _P + "udp_forwarded_bytes_total",
            "Bytes of sealed datagrams forwarded by UDP.",
            udp.forwarded_bytes,
        )
        udp_drops = {reason: udp.dropped.get(reason, 0) for reason in DROP_REASONS}
        yield _by_reason("udp_dropped_packets_total", "UDP packets dropped, by reason.", udp_drops)
        yield histogram(
            _P + "challenge_cpu_seconds",
            "CPU time of one KEM challenge (made for each Hello).",
            counts.challenge_cpu_s,
        )


def _by_reason(name: str, doc: str, counts: Mapping[str, int]) -> Metric:
    samples = [((reason,), n) for reason, n in sorted(counts.items())]
    return counter(_P + name, doc, labels=("reason",), samples=samples)
