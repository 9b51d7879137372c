"""Shared test settings: one hypothesis profile for the whole suite, and private runtime and
state directories, so that peers started by the tests put their default control socket
there, and relays their default identity, and never meet those of another test run on the
same host (or the user's own)."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

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
