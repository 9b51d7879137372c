"""What the relays' answers say about this host's network (`meshcore-peer netcheck`): for each
address family, whether any relay answered, the address each one saw us at, whether the NAT
keeps our port and whether its mapping varies by destination, and what that means for direct
paths (docs/observability.md, "netcheck").

Pure: `RelayProbe`s in (what one relay address answered to `ObserveAddress`, sent from the
one shared local port), a `NetcheckReport` out.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Literal

import attrs

from meshcore.proto.endpoint import Endpoint

__all__ = ["FamilyReport", "NatMapping", "NetcheckReport", "RelayProbe", "assess_probes"]


@attrs.frozen
class RelayProbe:
    """What one relay address answered (or why it did not)."""

    url: str
    """The relay's URL as given."""
    relay: Endpoint | None
    """The relay address dialled (None if the URL did not resolve)."""
    local: Endpoint | None = None
    """Our end of the connection (this host's address and the shared port)."""
    observed: Endpoint | None = None
    """Where the relay saw the connection come from (after any NAT)."""
    latency_s: float | None = None
    """Median round trip of the ObserveAddress questions on the open connection."""
    connect_s: float | None = None
    """Time to connect (TCP and the WebSocket upgrade)."""
    error: str | None = None
    """Why there is no answer (no connection, a refusal, a relay too old to answer)."""

    @property
    def family(self) -> int | None:
        """4 or 6: the relay address's family (None if it did not resolve)."""
        return None if self.relay is None else self.relay.family


class NatMapping(enum.Enum):
    """What stands between this host and the relays, as far as their answers tell."""

    NONE = "no NAT"
    """The relays see this host's own address and port."""
    PORT_PRESERVING = "port-preserving NAT"
    """A NAT that keeps the port, the same at every destination."""
    ENDPOINT_INDEPENDENT = "endpoint-independent NAT"
    """A NAT that changes the port but uses one mapping for every destination."""
    VARIES_BY_DESTINATION = "mapping varies by destination"
    """A new mapping per destination (a "symmetric" NAT)."""
    PORT_CHANGED = "port-changing NAT"
    """The port is changed; one destination answered, so whether it varies is unknown."""
    UNKNOWN = "unknown"
    """No relay answered over this family."""


@attrs.frozen
class FamilyReport:
    """IPv4 or IPv6: what the relays answered over it."""

    family: Literal[4, 6]
    reachable: bool
    """At least one relay answered over this family."""
    mapping: NatMapping
    observed: tuple[Endpoint, ...]
    """The distinct addresses the relays saw us at."""
    preserves_port: bool | None
    """Every relay saw our own port (None: none answered)."""
    varies_by_destination: bool | None
    """Relays at different addresses saw us at different addresses (None: fewer than two
    relay addresses answered, so it cannot be told)."""
    verdict: str
    """What it means for direct paths, in one line."""


@attrs.frozen
class NetcheckReport:
    """Every probe, and the assessment per family; `verdict` is the one to print first."""

    probes: tuple[RelayProbe, ...]
    ipv4: FamilyReport
    ipv6: FamilyReport

    @property
    def verdict(self) -> str:
        """IPv4's verdict if any relay answered over IPv4, else IPv6's."""
        return (
            self.ipv4.verdict
            if self.ipv4.reachable or not self.ipv6.reachable
            else (self.ipv6.verdict)
        )


_ONE_DESTINATION = (
    " (only one relay address answered: give a second relay to tell whether the mapping "
    "varies by destination)"
)


def _assess(family: Literal[4, 6], probes: Sequence[RelayProbe]) -> FamilyReport:
    answered = [p for p in probes if p.family == family and p.observed is not None]
    name = f"IPv{family}"
    if not answered:
        return FamilyReport(
            family, False, NatMapping.UNKNOWN, (), None, None, f"no relay answered over {name}"
        )
    observed = tuple(dict.fromkeys(p.observed for p in answered if p.observed is not None))
    destinations = {p.relay for p in answered}
    varies = len(observed) > 1 if len(destinations) > 1 else None
    preserves = all(
        p.local is not None and p.observed is not None and p.observed.port == p.local.port
        for p in answered
    )
    untranslated = all(p.local is not None and p.observed == p.local for p in answered)
    if varies:
        mapping = NatMapping.VARIES_BY_DESTINATION
        verdict = "mapping varies by destination: direct only if the other side is reachable"
    elif untranslated:
        mapping = NatMapping.NONE
        verdict = (
            "no NAT: the relays see this host's own address; direct connections should work "
            "(unless a firewall drops incoming connections)"
        )
    elif preserves:
        mapping = NatMapping.PORT_PRESERVING
        verdict = "port-preserving NAT: direct connections should work"
    elif varies is None:
        mapping = NatMapping.PORT_CHANGED
        verdict = (
            "the NAT changes the port: give a second relay to tell whether its mapping varies "
            "by destination (if it does, direct only if the other side is reachable)"
        )
        return FamilyReport(family, True, mapping, observed, False, None, verdict)
    else:
        mapping = NatMapping.ENDPOINT_INDEPENDENT
        verdict = (
            "NAT with one mapping for every destination: direct connections should work "
            "(the peer dials the address the relays see)"
        )
    if varies is None:
        verdict += _ONE_DESTINATION
    return FamilyReport(family, True, mapping, observed, preserves, varies, verdict)


def assess_probes(probes: Sequence[RelayProbe]) -> NetcheckReport:
    """The report on `probes` (all sent from one local port, as `netcheck` sends them)."""
    return NetcheckReport(tuple(probes), _assess(4, probes), _assess(6, probes))
