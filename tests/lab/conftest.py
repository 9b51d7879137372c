"""Lab fixtures and the skip rule: every test here builds real network namespaces.

They skip only where root, `nft` or /dev/net/tun is missing, and say so loudly; under CI
(the CI environment variable set) a missing prerequisite fails instead, because CI runs as
root and must run them. Stale labs of dead test runs are swept once per session.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest

from .netlab import Lab, LabError, Topology, lab_namespaces, missing_prerequisites, sweep_stale_labs

_HERE = os.path.dirname(os.path.abspath(__file__))
_MISSING = missing_prerequisites()
_IN_CI = os.environ.get("CI", "").lower() not in ("", "0", "false", "no")
_SKIP_REASON = "LAB TESTS SKIPPED, this machine lacks: " + "; ".join(_MISSING)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test under tests/lab with `lab`; skip them loudly if the lab cannot run."""
    for item in items:
        if not str(item.path).startswith(_HERE + os.sep):
            continue
        item.add_marker(pytest.mark.lab)
        if _MISSING and not _IN_CI:
            item.add_marker(pytest.mark.skip(reason=_SKIP_REASON))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _MISSING and not _IN_CI:
        terminalreporter.write_line("!" * 80, red=True)
        terminalreporter.write_line(_SKIP_REASON, red=True, bold=True)
        terminalreporter.write_line("!" * 80, red=True)


@pytest.fixture(scope="session", autouse=True)
def lab_prerequisites() -> None:
    """Fail (under CI) when the lab cannot run; otherwise sweep labs left by dead runs."""
    if _MISSING:
        pytest.fail(f"CI must run the lab tests, but this machine lacks: {'; '.join(_MISSING)}")
    sweep_stale_labs()


@pytest.fixture
def make_lab() -> Iterator[Callable[[Topology], Lab]]:
    """Build labs on demand; each is torn down after the test, pass or fail, and checked gone."""
    labs: list[Lab] = []

    def make(topology: Topology) -> Lab:
        lab = Lab(topology)
        labs.append(lab)
        return lab.__enter__()

    try:
        yield make
    finally:
        problems = []
        for lab in reversed(labs):
            try:
                lab.close()
            except LabError as exc:
                problems.append(exc)
        if problems:
            raise problems[0]
    left = set(lab_namespaces()) & {ns for lab in labs for ns in lab.namespaces}
    assert not left, f"lab namespaces survived teardown: {sorted(left)}"


@pytest.fixture
def flat_lab(make_lab: Callable[[Topology], Lab]) -> Lab:
    """Hosts a and b with public addresses, the relay and the router."""
    return make_lab(Topology.flat())
