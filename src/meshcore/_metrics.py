"""Serve Prometheus metrics from trio: a tiny HTTP/1.1 responder for `GET /metrics`.

The page is rendered by prometheus-client's `generate_latest` from a `CollectorRegistry` of
our own collectors (`meshcore._metrics_relay`, `meshcore._metrics_peer`), which read the
counters the relay and the sessions keep anyway, at scrape time: nothing is added to the data
path. One request per connection, bounded in size and time, rendered on the trio thread (no
second HTTP stack, no thread per scrape). prometheus-client is the `metrics` extra; without
it `serve_metrics` fails at once saying what to install. docs/observability.md lists every
metric.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Final, NoReturn, Protocol

import trio

from meshcore._nursery import open_hidden_nursery
from meshcore.errors import ConfigError
from meshcore.proto.endpoint import Endpoint
from meshcore.proto.histogram import HistogramSnapshot

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

__all__ = [
    "METRICS_DEFAULT_HOST",
    "MetricsCollector",
    "MetricsServer",
    "build_info",
    "counter",
    "gauge",
    "histogram",
    "parse_metrics_address",
    "serve_metrics",
]

log = logging.getLogger("meshcore.metrics")

METRICS_DEFAULT_HOST: Final = "127.0.0.1"
"""Where metrics are served when only a port is given: this host only."""
EXTRA_HINT: Final = (
    "serving metrics needs prometheus-client: install meshcore's metrics extra "
    "(pip install 'meshcore[metrics]')"
)
_MAX_REQUEST_BYTES: Final = 8192
_REQUEST_TIMEOUT_S: Final = 5.0
"""A client gets this long to send its request, and again to take the answer."""
_MAX_CONNECTIONS: Final = 16
_ADDRESS_FORM: Final = 'PORT or HOST:PORT, e.g. "9090", "127.0.0.1:9090" or "[::1]:9090"'


class MetricsCollector(Protocol):
    """What `serve_metrics` renders: prometheus-client's collector interface."""

    def collect(self) -> Iterable[Metric]:
        """The metric families, read now."""


# --- metric families, for the collectors (prometheus-client is imported on first use) -------


def gauge(name: str, doc: str, value: float) -> Metric:
    """A gauge without labels."""
    from prometheus_client.core import GaugeMetricFamily

    return GaugeMetricFamily(name, doc, value=value)


def counter(
    name: str,
    doc: str,
    value: float | None = None,
    *,
    labels: Sequence[str] = (),
    samples: Iterable[tuple[Sequence[str], float]] = (),
) -> Metric:
    """A counter (`name` ends in `_total`): one `value`, or `samples` of label values."""
    from prometheus_client.core import CounterMetricFamily

    if value is not None:
        return CounterMetricFamily(name, doc, value=value)
    metric = CounterMetricFamily(name, doc, labels=labels)
    for label_values, n in samples:
        metric.add_metric(label_values, n)
    return metric


def histogram(name: str, doc: str, snapshot: HistogramSnapshot) -> Metric:
    """A histogram from a `proto.histogram` snapshot."""
    from prometheus_client.core import HistogramMetricFamily

    buckets = [("+Inf" if math.isinf(le) else repr(le), float(n)) for le, n in snapshot.buckets]
    return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=snapshot.sum)


def build_info() -> Metric:
    """`meshcore_build_info{version}`: always 1, its label says which meshcore runs."""
    from prometheus_client.core import GaugeMetricFamily

    from meshcore import __version__

    info = GaugeMetricFamily(
        "meshcore_build_info", "The meshcore version running (always 1).", labels=("version",)
    )
    info.add_metric((__version__,), 1)
    return info


def parse_metrics_address(text: str) -> tuple[str, int]:
    """Split "PORT", "HOST:PORT" or "[IPv6]:PORT" into (host, port); a bare port means
    `METRICS_DEFAULT_HOST`, so metrics reach other hosts only when an address says so.

    Raises ValueError saying what is wrong (the settings loaders turn it into a ConfigError).
    """
    text = text.strip()
    if text.isascii() and text.isdigit():
        host, port_text = METRICS_DEFAULT_HOST, text
    elif text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ValueError(f"must be {_ADDRESS_FORM}; missing ']:PORT' in {text!r}")
        port_text = rest[1:]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise ValueError(f"must be {_ADDRESS_FORM}; got {text!r}")
        if ":" in host:
            raise ValueError(f"must be {_ADDRESS_FORM}; an IPv6 address needs brackets")
    if not host:
        raise ValueError(f"must be {_ADDRESS_FORM}; the host is empty in {text!r}")
    if not (port_text.isascii() and port_text.isdigit()) or int(port_text) > 0xFFFF:
        raise ValueError(f"must be {_ADDRESS_FORM}; port {port_text!r} is not 0..65535")
    return host, int(port_text)


class MetricsServer:
    """A running metrics endpoint, as handed out by `serve_metrics`."""

    def __init__(self, endpoints: Sequence[Endpoint]) -> None:
        self.endpoints = list(endpoints)

    @property
    def port(self) -> int:
        """The TCP port metrics are served on."""
        return self.endpoints[0].port

    @property
    def url(self) -> str:
        """The URL to scrape (its first listening address)."""
        host = self.endpoints[0].host
        if host in ("0.0.0.0", "::"):
            host = "127.0.0.1" if host == "0.0.0.0" else "::1"
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}/metrics"


def _renderer(collectors: Iterable[MetricsCollector]) -> tuple[Callable[[], bytes], str]:
    """(render, content type) over a registry of `collectors`; ConfigError without the extra."""
    try:
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
    except ImportError:
        raise ConfigError(EXTRA_HINT) from None
    registry = CollectorRegistry()
    for collector in collectors:
        registry.register(collector)
    return partial(generate_latest, registry), CONTENT_TYPE_LATEST


async def serve_metrics(
    address: str,
    collectors: Iterable[MetricsCollector],
    *,
    task_status: trio.TaskStatus[MetricsServer] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Serve `GET /metrics` on `address` ("PORT" or "HOST:PORT"; a bare port is loopback)
    until cancelled: `server = await nursery.start(serve_metrics, address, collectors)`.

    Every scrape renders the `collectors` afresh in the Prometheus text format. Other paths
    get 404, other methods 405, oversized requests 431, slow ones 408. Raises ConfigError at
    once if prometheus-client is missing (naming the extra), the address is malformed, or it
    cannot listen there. Cancellation closes the listener and cuts the scrapes in progress.
    """
    try:
        host, port = parse_metrics_address(address)
    except ValueError as exc:
        raise ConfigError(f"metrics address {exc}") from None
    render, content_type = _renderer(collectors)
    try:
        listeners = await trio.open_tcp_listeners(port, host=host)
    except OSError as exc:
        raise ConfigError(
            f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}; choose another "
            "address or port for --metrics"
        ) from None
    endpoints = [Endpoint.from_sockaddr(lst.socket.getsockname()) for lst in listeners]
    active = [0]

    async def handle(stream: trio.SocketStream) -> None:
        async with stream:
            if active[0] >= _MAX_CONNECTIONS:
                return  # closed at once: a scraper retries, a flood costs nothing
            active[0] += 1
            try:
                await _answer(stream, render, content_type)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            finally:
                active[0] -= 1

    try:
        async with open_hidden_nursery() as nursery:
            await nursery.start(trio.serve_listeners, handle, listeners)
            server = MetricsServer(endpoints)
            log.info("serving metrics on %s", server.url)
            task_status.started(server)
            await trio.sleep_forever()
    finally:
        for listener in listeners:
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(listener)
    raise AssertionError("unreachable")  # pragma: no cover


async def _answer(
    stream: trio.SocketStream, render: Callable[[], bytes], content_type: str
) -> None:
    """Read one request (bounded), answer it, close."""
    request = b""
    with trio.move_on_after(_REQUEST_TIMEOUT_S) as reading:
        while b"\r\n\r\n" not in request and b"\n\n" not in request:
            if len(request) > _MAX_REQUEST_BYTES:
                await _respond(stream, 431, b"request header fields too large\n")
                return
            chunk = await stream.receive_some(4096)
            if not chunk:
                return
            request += chunk
    if reading.cancelled_caught:
        await _respond(stream, 408, b"request timeout\n")
        return
    parts = request.split(b"\n", 1)[0].rstrip(b"\r").split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        await _respond(stream, 400, b"bad request\n")
        return
    method, target = parts[0], parts[1]
    if target.split(b"?", 1)[0] != b"/metrics":
        await _respond(stream, 404, b"not found: metrics are at /metrics\n")
        return
    if method not in (b"GET", b"HEAD"):
        await _respond(stream, 405, b"method not allowed\n", extra=b"Allow: GET, HEAD\r\n")
        return
    body = render()
    await _respond(stream, 200, body, content_type=content_type, head=method == b"HEAD")


_REASONS: Final = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
}


async def _respond(
    stream: trio.SocketStream,
    status: int,
    body: bytes,
    *,
    content_type: str = "text/plain; charset=utf-8",
    extra: bytes = b"",
    head: bool = False,
) -> None:
    header = (
        (
            f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n"
        ).encode()
        + extra
        + b"\r\n"
    )
    with trio.move_on_after(_REQUEST_TIMEOUT_S):
        await stream.send_all(header if head else header + body)
