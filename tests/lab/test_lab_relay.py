"""The real executables in the lab: meshcore-relay in the relay namespace, `meshcore-peer
listen` on b and `connect` from a, behind each kind of NAT. A file crosses intact, and the
router's counters show which way it went."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from .netlab import Lab, Meshcore, Nat, Topology

MakeLab = Callable[[Topology], Lab]
SIZE = 8 * 1024 * 1024

# `meshcore-peer connect` carries every session through the relay for now: it has no direct
# path yet (DESIGN §1 step 5). When it gets one, the flat and port-preserving rows become
# "direct"; fully-random on both sides stays "relay" (DESIGN §5).
EXPECTED_PATH = {
    (Nat.NONE, Nat.NONE): "relay",
    (Nat.PRESERVING, Nat.PRESERVING): "relay",
    (Nat.RANDOM, Nat.RANDOM): "relay",
    (Nat.PRESERVING, Nat.RANDOM): "relay",
}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize(("nat_a", "nat_b"), list(EXPECTED_PATH), ids=lambda nat: str(nat.value))
def test_file_crosses_intact_and_counters_show_its_path(
    make_lab: MakeLab, nat_a: Nat, nat_b: Nat
) -> None:
    lab = make_lab(Topology.behind(nat_a, nat_b))
    mesh = Meshcore(lab)
    mesh.start_relay()
    source, received = lab.workdir / "source.bin", lab.workdir / "received.bin"
    source.write_bytes(os.urandom(SIZE))
    with received.open("wb") as sink:
        listener = mesh.listen("b", allow=[mesh.key("a").peer_id], stdout=sink)
        lab.reset_counters()
        with source.open("rb") as stdin:
            connect = mesh.connect("a", mesh.key("b").peer_id, stdin=stdin)
            assert connect.wait(120) == 0, connect.output
        listener.wait_for("done", 60)
    assert received.stat().st_size == SIZE
    assert sha256(received) == sha256(source)

    counters = lab.counters()
    via_relay = min(counters["a", "relay"].bytes, counters["relay", "b"].bytes)
    direct = counters["a", "b"].bytes
    if EXPECTED_PATH[nat_a, nat_b] == "relay":
        assert via_relay >= SIZE, counters
        assert counters.between("a", "b").packets == 0, counters
    else:
        assert direct >= SIZE, counters
