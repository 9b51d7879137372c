"""A peer's Prometheus metrics: a collector that reads, at each scrape, the sessions of a
`SessionRegistry` (their counters, plus the sum the registry kept of the ended ones, so that
counters only grow), the TAP tunnel's frame pump, and the relay connections if given.
docs/observability.md describes every metric (prefix `meshcore_peer_`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Final

from meshcore._client import RelayClient
from meshcore._control import SessionRegistry
from meshcore._counters import SessionCounters
from meshcore._metrics import build_info, counter
from meshcore._network import RelayNetwork
from meshcore._tunnel import FramePump

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

__all__ = ["PeerCollector"]

_P: Final = "meshcore_peer_"
_PATHS: Final = ("relay", "direct")


class PeerCollector:
    """Exports a peer's metrics from `sessions`; `tunnel` (the `up` command's `FramePump`) and
    `relay` (a `RelayClient`, or a `RelayNetwork` of several) may be given now or set later."""

    def __init__(
        self,
        sessions: SessionRegistry,
        *,
        tunnel: FramePump | None = None,
        relay: RelayClient | RelayNetwork | None = None,
    ) -> None:
        self.sessions = sessions
        self.tunnel = tunnel
        self.relay = relay

    def collect(self) -> Iterator[Metric]:
        """The metric families, read now (on the trio thread, between two events)."""
        yield build_info()
        live = self.sessions.sessions()
        statuses = [(s.status(), s) for s in live]
        total = self.sessions.ended_counters() + SessionCounters.total(s.counters() for s in live)
        by_path = {path: 0 for path in _PATHS}
        rtt: list[tuple[tuple[str, ...], float]] = []
        for status, _ in statuses:
            by_path[status.path] = by_path.get(status.path, 0) + 1
            if status.rtt_s is not None:
                label = self.sessions.name_of(status.peer_id) or status.peer_id
                rtt.append(((label, status.path), status.rtt_s))
        yield _labelled_gauge(
            "sessions", "Live sessions, by the path they take now.", ("path",),
            [((path,), n) for path, n in by_path.items()],
        )  # fmt: skip
        yield _labelled_gauge(
            "session_rtt_seconds",
            "Latest round trip of each live session on its active path.",
            ("peer", "path"),
            rtt,
        )
        yield from _session_counters(total)
        if self.tunnel is not None:
            yield from _tunnel_counters(self.tunnel)
        relay = self.relay
        if relay is not None:
            if isinstance(relay, RelayNetwork):
                conns = [
                    (c.url, c.state == "connected", c.registrations) for c in relay.connections()
                ]
            else:
                conns = [(relay.url, relay.connected, relay.registrations)]
            yield _labelled_gauge(
                "relay_connected",
                "1 while the control connection to the relay is up, else 0.",
                ("relay",),
                [((url,), 1 if up else 0) for url, up, _ in conns],
            )
            yield counter(
                _P + "relay_registrations_total",
                "Registrations at the relay (the first, then one per reconnect).",
                labels=("relay",),
                samples=[((url,), n) for url, _, n in conns],
            )


def _session_counters(total: SessionCounters) -> Iterator[Metric]:
    t = total
    yield counter(
        _P + "path_frames_total",
        "Sealed frames, by path and direction.",
        labels=("path", "direction"),
        samples=[
            (("relay", "sent"), t.relay_frames_sent),
            (("relay", "received"), t.relay_frames_received),
            (("direct", "sent"), t.direct_frames_sent),
            (("direct", "received"), t.direct_frames_received),
        ],
    )
    yield counter(
        _P + "path_bytes_total",
        "Bytes of sealed frames (header and tag included), by path and direction.",
        labels=("path", "direction"),
        samples=[
            (("relay", "sent"), t.relay_bytes_sent),
            (("relay", "received"), t.relay_bytes_received),
            (("direct", "sent"), t.direct_bytes_sent),
            (("direct", "received"), t.direct_bytes_received),
        ],
    )
    yield counter(
        _P + "messages_total",
        "Application messages, by direction.",
        labels=("direction",),
        samples=[(("sent",), t.messages_sent), (("received",), t.messages_received)],
    )
    yield counter(
        _P + "message_bytes_total",
        "Application message bytes, by direction.",
        labels=("direction",),
        samples=[(("sent",), t.message_bytes_sent), (("received",), t.message_bytes_received)],
    )
    yield counter(
        _P + "migrations_total",
        "Moves of a session between paths, by kind.",
        labels=("kind",),
        samples=[
            (("relay_to_direct",), t.migrations),
            (("direct_to_relay",), t.fallbacks),
            (("relay_to_relay",), t.relay_moves),
        ],
    )
    yield counter(
        _P + "fallbacks_total",
        "Falls back from a direct path to the relay, by reason.",
        labels=("reason",),
        samples=[
            (("transport_error",), t.fallbacks - t.fallbacks_silent),
            (("silent",), t.fallbacks_silent),
        ],
    )
    yield counter(_P + "direct_attempts_total", "Races for a direct path.", t.direct_attempts)
    yield counter(
        _P + "direct_successes_total", "Races won: a direct path validated.", t.migrations
    )
    yield counter(_P + "retransmissions_total", "Messages sent again.", t.retransmitted)
    yield counter(_P + "rekeys_total", "Fresh handshakes completed inside sessions.", t.rekeys)
    yield counter(
        _P + "dropped_frames_total",
        "Frames dropped by sessions, by reason.",
        labels=("reason",),
        samples=[
            (("replayed",), t.replayed),
            (("rejected",), t.rejected),
            (("link_queue_full",), t.link_queue_drops),
        ],
    )


def _tunnel_counters(pump: FramePump) -> Iterator[Metric]:
    stats = list(pump.stats.values())
    yield counter(
        _P + "tap_frames_total",
        "Ethernet frames between the TAP device and the peers, by direction.",
        labels=("direction",),
        samples=[
            (("out",), sum(s.frames_out for s in stats)),
            (("in",), sum(s.frames_in for s in stats)),
        ],
    )
    yield counter(
        _P + "tap_bytes_total",
        "Bytes of those frames (virtio-net header included), by direction.",
        labels=("direction",),
        samples=[
            (("out",), sum(s.bytes_out for s in stats)),
            (("in",), sum(s.bytes_in for s in stats)),
        ],
    )
    yield counter(
        _P + "tap_dropped_frames_total",
        "Ethernet frames the tunnel dropped, by reason.",
        labels=("reason",),
        samples=[
            (("queue_full",), sum(s.dropped_queue_full for s in stats)),
            (("invalid",), sum(s.dropped_invalid for s in stats)),
            (("device_write",), sum(s.dropped_write for s in stats)),
            (("no_session",), pump.dropped_no_session),
        ],
    )
    yield counter(
        _P + "tap_bad_messages_total",
        "Tunnel messages from peers that did not decode into frames.",
        sum(s.bad_messages for s in stats),
    )


def _labelled_gauge(
    name: str,
    doc: str,
    labels: tuple[str, ...],
    samples: Sequence[tuple[tuple[str, ...], float]],
) -> Metric:
    from prometheus_client.core import GaugeMetricFamily

    metric = GaugeMetricFamily(_P + name, doc, labels=labels)
    for label_values, value in samples:
        metric.add_metric(label_values, value)
    return metric
