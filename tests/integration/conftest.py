"""Fixtures for the tests that need a real Ethereum JSON-RPC node (anvil).

Without anvil they skip, saying how to install it; under CI (the CI environment variable
set) they fail instead, because .ci/run installs anvil and CI must run them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

_IN_CI = os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


@pytest.fixture(scope="session")
def anvil_binary() -> Path:
    """The anvil binary, or a skip (a failure under CI) naming how to install it."""
    try:
        from meshcore.testing.chain import find_anvil
    except ImportError as exc:  # the chain extra is missing
        path, missing = None, f"the chain test extra is not installed ({exc})"
    else:
        path = find_anvil()
        missing = (
            "anvil is not installed: `npm ci --prefix .ci/node` (as .ci/run does), or set "
            "MESHCORE_ANVIL to its binary"
        )
    if path is None:
        if _IN_CI:
            pytest.fail(f"CI must run the anvil tests, but {missing}")
        pytest.skip(f"ANVIL TESTS SKIPPED: {missing}")
    return path


@pytest.fixture(scope="module")
def anvil(anvil_binary: Path) -> Iterator[object]:
    """A fresh anvil node on a free loopback port, for the tests of one module."""
    from meshcore.testing.chain import running_anvil

    with running_anvil(anvil_binary, accounts=4) as node:
        yield node
