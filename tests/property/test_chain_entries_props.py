"""For all raw on-chain entries: a relay-list mapping or an entry problem, never an exception;
mappings carry the exact bytes and an id that parses back to the digest."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from meshcore.chain.entries import EntryProblem, entry_from_chain
from meshcore.proto.identity import PeerId

ACCOUNT = "0x" + "ab" * 20
texts = st.one_of(st.binary(max_size=300), st.text(max_size=100).map(lambda s: s.encode()))


@given(st.integers(0, 255), st.binary(min_size=0, max_size=40), texts, texts)
def test_every_raw_entry_becomes_a_mapping_or_a_problem(
    index: int, relay: bytes, url: bytes, region: bytes
) -> None:
    result = entry_from_chain(index, ACCOUNT, relay, url, region)
    if isinstance(result, EntryProblem):
        assert result.index == index and result.account == ACCOUNT and result.problem
        return
    assert set(result) <= {"url", "id", "region"}
    assert result["url"].encode() == url
    assert result.get("region", "").encode() == region
    assert PeerId.from_text(result["id"]).digest == relay


@given(st.binary(min_size=32, max_size=32).filter(any), st.text(max_size=60), st.text(max_size=20))
def test_utf8_fields_and_a_nonzero_32_byte_id_always_make_a_mapping(
    relay: bytes, url: str, region: str
) -> None:
    result = entry_from_chain(0, ACCOUNT, relay, url.encode(), region.encode())
    assert result == {
        "url": url,
        "id": PeerId(relay).to_text(),
        **({"region": region} if region else {}),
    }
