"""The committed contract artifacts: they are what the committed sources compile to, they ship
as package data, and the reader's ABI is the contract's with strings read as bytes."""

from __future__ import annotations

import copy
import hashlib
from typing import Any

import pytest

from meshcore.chain.artifacts import (
    CONTRACTS,
    VYPER_VERSION,
    compile_artifact,
    load_artifact,
    source_text,
)
from meshcore.chain.reader import READ_ABI


@pytest.mark.parametrize("name", CONTRACTS)
def test_the_committed_abi_and_bytecode_are_what_the_source_compiles_to(name: str) -> None:
    pytest.importorskip("vyper", reason="recompiling needs the test extra (vyper)")
    committed = load_artifact(name)
    fresh = compile_artifact(name)
    assert fresh.source_sha256 == committed.source_sha256, (
        f"{name}.vy changed: run `python -m meshcore.chain.artifacts` and commit the JSON"
    )
    assert fresh.abi == committed.abi
    assert fresh.bytecode == committed.bytecode
    assert committed.compiler == f"vyper {VYPER_VERSION}"


@pytest.mark.parametrize("name", CONTRACTS)
def test_sources_pin_the_compiler_they_were_built_with(name: str) -> None:
    source = source_text(name)
    assert f"# pragma version =={VYPER_VERSION}\n" in source
    assert hashlib.sha256(source.encode()).hexdigest() == load_artifact(name).source_sha256


def test_an_unknown_contract_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown contract"):
        load_artifact("Nope")


def _strings_as_bytes(item: Any) -> Any:
    if isinstance(item, dict):
        return {k: ("bytes" if k == "type" and v == "string" else _strings_as_bytes(v))
                for k, v in item.items() if k != "internalType"}  # fmt: skip
    if isinstance(item, list):
        return [_strings_as_bytes(v) for v in item]
    return item


def test_the_readers_abi_is_the_contracts_with_strings_as_bytes() -> None:
    contract = {f["name"]: f for f in load_artifact("RelayRegistry").abi if f["type"] == "function"}
    for fn in READ_ABI:
        expected = _strings_as_bytes(copy.deepcopy(contract[fn["name"]]))
        assert _strings_as_bytes(fn) == expected
