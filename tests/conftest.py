"""Shared test settings: one hypothesis profile for the whole suite; private runtime and
state directories, so that peers started by the tests put their default control socket
there, and relays their default identity, and never meet those of another test run on the
same host (or the user's own); and a check that no test's logs hold a traceback it did not
ask for."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "default",
    deadline=None,
    max_examples=int(os.environ.get("MESHCORE_HYPOTHESIS_EXAMPLES", "100")),
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("thorough", parent=settings.get_profile("default"), max_examples=2000)
settings.load_profile(os.environ.get("MESHCORE_HYPOTHESIS_PROFILE", "default"))

# Inherited by every peer process the tests start (default_control_path reads it).
_RUNTIME_DIR = tempfile.mkdtemp(prefix="meshcore-test-run-")
os.environ["XDG_RUNTIME_DIR"] = _RUNTIME_DIR
atexit.register(shutil.rmtree, _RUNTIME_DIR, ignore_errors=True)

# Inherited by every relay process the tests start (the default identity file is there).
_STATE_DIR = tempfile.mkdtemp(prefix="meshcore-test-state-")
os.environ["XDG_STATE_HOME"] = _STATE_DIR
os.environ.pop("STATE_DIRECTORY", None)
atexit.register(shutil.rmtree, _STATE_DIR, ignore_errors=True)

# --- no traceback anywhere it should not be ------------------------------------------------
#
# Expected failures never print a traceback or an exception group (docs/architecture.md).
# Every test is checked: its captured log records, and the log files of the processes it ran
# (tests that start executables write their stderr to `*.log` files in their tmp_path).
# A test that provokes one on purpose says so with @pytest.mark.allow_traceback.

_FORBIDDEN = ("Traceback", "ExceptionGroup")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "allow_traceback: the test expects a traceback in its logs or stderr"
    )


def _offences(text: str) -> list[str]:
    return [line for line in text.splitlines() if any(word in line for word in _FORBIDDEN)]


@pytest.fixture(autouse=True)
def _no_tracebacks(
    request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> Iterator[None]:
    yield
    if request.node.get_closest_marker("allow_traceback") is not None:
        return
    found: list[str] = []
    for when in ("setup", "call"):
        for record in caplog.get_records(when):
            if record.exc_info is not None:
                found.append(f"log record with a traceback: {record.name}: {record.getMessage()}")
            found += [f"log record: {line}" for line in _offences(record.getMessage())]
    tmp_path = request.node.funcargs.get("tmp_path")
    if isinstance(tmp_path, Path):
        for log in sorted(tmp_path.rglob("*.log")):
            text = log.read_text(errors="replace")
            found += [f"{log.name}: {line}" for line in _offences(text)]
    if found:
        pytest.fail("tracebacks where none belong:\n" + "\n".join(found[:20]), pytrace=False)
