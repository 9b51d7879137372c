"""What netcheck concludes from the relays' answers (`meshcore.proto.netcheck`), and how
`meshcore-peer netcheck` prints it."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from meshcore.proto.endpoint import Endpoint
from meshcore.proto.netcheck import NatMapping, RelayProbe, assess_probes
from meshcore_peer.netcheck import format_report, report_json

LOCAL = Endpoint("10.1.0.2", 41000)
RELAY_A = Endpoint("198.18.0.2", 7443)
RELAY_B = Endpoint("198.18.0.2", 7444)


def probe(relay: Endpoint, observed: Endpoint, local: Endpoint = LOCAL) -> RelayProbe:
    return RelayProbe(f"ws://{relay}/", relay, local, observed, latency_s=0.002)


def test_two_relays_seeing_one_public_address_with_our_port_is_port_preserving() -> None:
    public = Endpoint("198.18.1.2", 41000)
    report = assess_probes([probe(RELAY_A, public), probe(RELAY_B, public)])
    assert report.ipv4.mapping is NatMapping.PORT_PRESERVING
    assert (report.ipv4.preserves_port, report.ipv4.varies_by_destination) == (True, False)
    assert report.verdict == "port-preserving NAT: direct connections should work"


def test_two_relays_seeing_different_ports_is_a_mapping_that_varies() -> None:
    report = assess_probes(
        [probe(RELAY_A, Endpoint("198.18.1.2", 5001)), probe(RELAY_B, Endpoint("198.18.1.2", 61))]
    )
    assert report.ipv4.mapping is NatMapping.VARIES_BY_DESTINATION
    assert report.ipv4.varies_by_destination is True
    assert report.verdict == (
        "mapping varies by destination: direct only if the other side is reachable"
    )


def test_one_mapping_with_another_port_is_endpoint_independent() -> None:
    public = Endpoint("198.18.1.2", 5001)
    report = assess_probes([probe(RELAY_A, public), probe(RELAY_B, public)])
    assert report.ipv4.mapping is NatMapping.ENDPOINT_INDEPENDENT
    assert report.ipv4.preserves_port is False
    assert "direct connections should work" in report.verdict


def test_relays_seeing_our_own_address_mean_no_nat() -> None:
    report = assess_probes([probe(RELAY_A, LOCAL), probe(RELAY_B, LOCAL)])
    assert report.ipv4.mapping is NatMapping.NONE
    assert report.verdict.startswith("no NAT")


def test_one_relay_cannot_tell_whether_the_mapping_varies() -> None:
    report = assess_probes([probe(RELAY_A, Endpoint("198.18.1.2", 41000))])
    assert report.ipv4.varies_by_destination is None
    assert report.verdict.startswith("port-preserving NAT: direct connections should work")
    assert "give a second relay" in report.verdict
    changed = assess_probes([probe(RELAY_A, Endpoint("198.18.1.2", 5))])
    assert changed.ipv4.mapping is NatMapping.PORT_CHANGED
    assert "give a second relay" in changed.verdict


def test_no_answer_over_a_family_is_reported_as_unreachable() -> None:
    failed = RelayProbe("ws://[2001:db8::1]:7443/", Endpoint("2001:db8::1", 7443), error="no")
    report = assess_probes([probe(RELAY_A, LOCAL), failed])
    assert report.ipv4.reachable and not report.ipv6.reachable
    assert report.ipv6.mapping is NatMapping.UNKNOWN
    assert report.ipv6.verdict == "no relay answered over IPv6"


def test_the_ipv6_verdict_stands_when_only_ipv6_answered() -> None:
    local6 = Endpoint("2001:db8::2", 41000)
    relay6 = Endpoint("2001:db8::1", 7443)
    report = assess_probes([probe(relay6, local6, local6)])
    assert not report.ipv4.reachable
    assert report.verdict == report.ipv6.verdict


@given(
    st.lists(
        st.tuples(st.integers(7000, 7003), st.integers(1, 65535), st.booleans()),
        min_size=1,
        max_size=6,
    )
)
def test_the_mapping_follows_from_the_answers(answers: list[tuple[int, int, bool]]) -> None:
    probes = [
        probe(Endpoint("198.18.0.2", relay_port), Endpoint("198.18.1.2", port))
        if answered
        else RelayProbe("ws://x/", Endpoint("198.18.0.2", relay_port), error="refused")
        for relay_port, port, answered in answers
    ]
    report = assess_probes(probes)
    seen = {p.observed for p in probes if p.observed is not None}
    relays = {p.relay for p in probes if p.observed is not None}
    assert report.ipv4.reachable == bool(seen)
    assert set(report.ipv4.observed) == seen
    if len(seen) > 1 and len(relays) > 1:
        assert report.ipv4.mapping is NatMapping.VARIES_BY_DESTINATION
    if report.ipv4.mapping is NatMapping.PORT_PRESERVING:
        assert {e.port for e in seen} == {LOCAL.port}


def test_the_report_prints_every_family_the_verdict_and_every_relay() -> None:
    public = Endpoint("198.18.1.2", 41000)
    failed = RelayProbe("ws://gone:7443/", None, error="cannot resolve gone")
    report = assess_probes([probe(RELAY_A, public), probe(RELAY_B, public), failed])
    lines = format_report(report)
    assert lines[:3] == ["Report:", "  * IPv4: yes, 198.18.1.2:41000", "  * IPv6: no"]
    assert "keeps the port: yes; varies by destination: no" in lines[3]
    assert lines[4] == "  * Direct paths: port-preserving NAT: direct connections should work"
    assert lines[6:] == [
        "      - ws://198.18.0.2:7443/ (198.18.0.2:7443): 2.00 ms, sees us at 198.18.1.2:41000",
        "      - ws://198.18.0.2:7444/ (198.18.0.2:7444): 2.00 ms, sees us at 198.18.1.2:41000",
        "      - ws://gone:7443/: cannot resolve gone",
    ]


def test_the_json_report_has_the_same_fields() -> None:
    public = Endpoint("198.18.1.2", 41000)
    data = json.loads(json.dumps(report_json(assess_probes([probe(RELAY_A, public)]))))
    assert data["ipv4"]["mapping"] == "port_preserving"
    assert data["ipv4"]["observed"] == ["198.18.1.2:41000"]
    assert data["relays"][0]["latency_ms"] == 2.0
    assert data["verdict"].startswith("port-preserving NAT")
