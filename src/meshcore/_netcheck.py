"""`netcheck`: ask relays which address they see this host at (`ObserveAddress`), from one
shared local port, the way the relay client and direct dials use it, and assess the answers
(`meshcore.proto.netcheck`). Nothing registers: netcheck needs no identity and never
disturbs a peer registered from this host. docs/observability.md explains the verdicts.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Sequence

import trio

from meshcore._transport import open_reuseport_listener, open_transport, parse_ws_url
from meshcore.errors import ConfigError, DecodeError, TransportClosed
from meshcore.proto.endpoint import Endpoint
from meshcore.proto.netcheck import NetcheckReport, RelayProbe, assess_probes
from meshcore.proto.wire import (
    Error,
    ErrorCode,
    ObserveAddress,
    ObservedAddress,
    RelayIdentity,
    decode_control_untrusted,
    encode_control,
)

__all__ = ["netcheck", "probe_relay_address"]

NETCHECK_TIMEOUT_S = 5.0
"""How long one relay address gets to connect and answer every question."""
NETCHECK_ECHOES = 3
"""Questions per relay address; the latency is the median of their round trips."""


async def _resolve(url: str) -> tuple[str, list[Endpoint]] | str:
    """(the URL's resource path, every address of its host), or why it cannot be resolved."""
    host, port, resource = parse_ws_url(url)
    try:
        infos = await trio.socket.getaddrinfo(host, port, type=trio.socket.SOCK_STREAM)
    except OSError as exc:
        return f"cannot resolve {host}: {exc.strerror or exc}"
    addresses = [Endpoint.from_sockaddr(info[4]) for info in infos]
    return resource, list(dict.fromkeys(addresses))


def _dial_url(relay: Endpoint, resource: str) -> str:
    host = f"[{relay.host}]" if relay.family == 6 else relay.host
    return f"ws://{host}:{relay.port}{resource}"


async def probe_relay_address(
    url: str,
    relay: Endpoint,
    *,
    resource: str = "/",
    local_port: int,
    echoes: int = NETCHECK_ECHOES,
    timeout: float = NETCHECK_TIMEOUT_S,
) -> RelayProbe:
    """Connect to `relay` (one address of `url`) from `local_port` and ask `echoes` times
    where it sees us. Never raises for the network's or the relay's failures: the probe's
    `error` says what happened. Cancellation closes the connection and propagates.
    """
    start = trio.current_time()
    dial_url = _dial_url(relay, resource)
    with trio.move_on_after(timeout) as scope:
        try:
            async with open_transport(
                dial_url, local_port=local_port, connect_timeout=timeout
            ) as transport:
                connected = trio.current_time()
                rtts: list[float] = []
                observed: Endpoint | None = None
                for _ in range(echoes):
                    nonce = int.from_bytes(os.urandom(8), "big")
                    sent = trio.current_time()
                    await transport.send(encode_control(ObserveAddress(nonce)))
                    answer = decode_control_untrusted(await transport.receive())
                    while isinstance(answer, RelayIdentity):  # sent first on every connection
                        answer = decode_control_untrusted(await transport.receive())
                    if isinstance(answer, Error):
                        return RelayProbe(url, relay, error=_refused(answer))
                    if not isinstance(answer, ObservedAddress) or answer.nonce != nonce:
                        name = type(answer).__name__
                        return RelayProbe(url, relay, error=f"unexpected answer {name}")
                    rtts.append(trio.current_time() - sent)
                    observed = answer.observed
                return RelayProbe(
                    url,
                    relay,
                    local=transport.local_address,
                    observed=observed,
                    latency_s=statistics.median(rtts),
                    connect_s=connected - start,
                )
        except TransportClosed as exc:  # the line shows the relay already: not again
            return RelayProbe(url, relay, error=exc.reason.removeprefix(f"{dial_url}: "))
        except DecodeError as exc:
            return RelayProbe(url, relay, error=f"the relay sent a malformed answer: {exc}")
    assert scope.cancelled_caught
    return RelayProbe(url, relay, error=f"no answer within {timeout:g} s")


def _refused(error: Error) -> str:
    if error.code is ErrorCode.BAD_MESSAGE and "type 24" in error.reason:
        return "this relay does not answer netcheck's question (an older meshcore-relay?)"
    return f"the relay refused: {error.reason or error.code.name}"


async def netcheck(
    urls: Sequence[str],
    *,
    local_port: int = 0,
    echoes: int = NETCHECK_ECHOES,
    timeout: float = NETCHECK_TIMEOUT_S,
) -> NetcheckReport:
    """Probe every address of every relay in `urls` from one shared local port (0: a free
    one) and assess the answers: the address each relay saw, whether the NAT keeps the port
    and whether its mapping varies by destination, per family, and the latency to each.

    The port is held by a listener while the probes run, as the relay client holds it. Raises
    ConfigError for a malformed URL or an unusable `local_port`; a relay that cannot be
    reached is a probe with an `error`, not an exception. Takes at most about `timeout`
    (the probes run at once). Cancellation closes every connection.
    """
    if not urls:
        raise ConfigError("netcheck needs at least one relay: pass --relay URL (repeatable)")
    targets: list[tuple[str, str, Endpoint]] = []
    probes: list[RelayProbe | None] = []
    for url in dict.fromkeys(urls):
        resolved = await _resolve(url)
        if isinstance(resolved, str):
            probes.append(RelayProbe(url, None, error=resolved))
            continue
        resource, addresses = resolved
        for address in addresses:
            targets.append((url, resource, address))
            probes.append(None)
    try:
        listener = await open_reuseport_listener("0.0.0.0", local_port)
    except OSError as exc:
        raise ConfigError(
            f"cannot use local port {local_port}: {exc.strerror or exc}; pick another"
        ) from None
    async with listener:
        port = Endpoint.from_sockaddr(listener.socket.getsockname()).port
        slots = [i for i, p in enumerate(probes) if p is None]

        async def probe(slot: int, url: str, resource: str, address: Endpoint) -> None:
            probes[slot] = await probe_relay_address(
                url, address, resource=resource, local_port=port, echoes=echoes, timeout=timeout
            )

        async with trio.open_nursery() as nursery:
            for slot, (url, resource, address) in zip(slots, targets, strict=True):
                nursery.start_soon(probe, slot, url, resource, address)
    return assess_probes([p for p in probes if p is not None])
