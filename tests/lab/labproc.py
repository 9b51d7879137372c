"""Processes and namespaces of the network lab: running commands, following a process's
output, and finding and deleting namespaces that a lab (or a dead test run) left behind.

Used by `netlab.py` (which re-exports the public names); stdlib only.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

__all__ = [
    "COMMAND_TIMEOUT_S",
    "LAB_PREFIX",
    "STOP_GRACE_S",
    "LabError",
    "LabProcess",
    "kill_namespace_processes",
    "lab_namespaces",
    "missing_prerequisites",
    "run_command",
    "sweep_stale_labs",
    "wait_until",
]

#: Every namespace and work directory of a lab starts with this, then the owner's pid.
LAB_PREFIX = "mclab-"
#: How long one setup command (ip, nft, tc) or a daemon's readiness may take.
COMMAND_TIMEOUT_S = 30.0
#: How long a stopped process gets between SIGTERM and SIGKILL.
STOP_GRACE_S = 5.0


class LabError(RuntimeError):
    """The lab could not be built, driven or torn down; the message says which step."""



class LabProcess:
    """A process running in a lab namespace; its output is collected by a reader thread.

    Unless `stdout` was redirected, stdout and stderr are merged into `output`. `wait_for`
    blocks on the reader's condition variable, never on a fixed sleep.
    """

    def __init__(self, node: str, argv: Sequence[str], proc: subprocess.Popen[bytes]) -> None:
        self.node = node
        self.argv = list(argv)
        self.proc = proc
        self._output = bytearray()
        self._cond = threading.Condition()
        self._eof = False
        stream = proc.stderr if proc.stdout is None else proc.stdout
        self._reader = threading.Thread(
            target=self._read, args=(stream,), name=f"lab-{node}-{proc.pid}", daemon=True
        )
        self._reader.start()

    def _read(self, stream: IO[bytes] | None) -> None:
        try:
            while stream is not None:
                chunk = os.read(stream.fileno(), 65536)
                if not chunk:
                    break
                with self._cond:
                    self._output += chunk
                    self._cond.notify_all()
        finally:
            with self._cond:
                self._eof = True
                self._cond.notify_all()

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def output(self) -> str:
        """Everything the process printed so far (decoded leniently)."""
        with self._cond:
            return self._output.decode(errors="replace")

    def wait_for(self, needle: str, timeout: float, *, count: int = 1) -> str:
        """Block until the output contains `needle` (`count` times); return the output.

        Raises LabError with the output so far if the process ends or `timeout` passes first.
        """
        deadline = time.monotonic() + timeout
        raw = needle.encode()
        with self._cond:
            while self._output.count(raw) < count:
                left = deadline - time.monotonic()
                if self._eof or left <= 0:
                    why = "exited" if self._eof else f"did not say it within {timeout} s"
                    raise LabError(
                        f"{self.argv[0]} in {self.node} {why} (waiting for {needle!r} x{count}); "
                        f"output:\n{self._output.decode(errors='replace')}"
                    )
                self._cond.wait(left)
            return self._output.decode(errors="replace")

    def wait(self, timeout: float) -> int:
        """Wait for the process to exit and its output to be read; return its exit code."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise LabError(
                f"{self.argv[0]} in {self.node} still runs after {timeout} s; output:\n"
                f"{self.output}"
            ) from None
        self._reader.join(timeout)
        return code

    def signal(self, sig: int) -> None:
        """Send `sig` to the process group (the process and any children it started)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)

    def stop(self, grace: float = STOP_GRACE_S) -> int:
        """SIGTERM the process group, SIGKILL it after `grace` seconds; return the exit code."""
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.proc.wait(grace)
        # Children that outlive it (e.g. a --exec command) die with the namespace.
        self._reader.join(grace)
        return self.proc.returncode


def run_command(argv: Sequence[str], *, input: bytes | None = None) -> str:
    """Run a setup command; raise LabError naming it and its stderr if it fails."""
    try:
        done = subprocess.run(
            list(argv), input=input, capture_output=True, timeout=COMMAND_TIMEOUT_S
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LabError(f"`{' '.join(argv)}` could not run: {exc}") from exc
    if done.returncode != 0:
        raise LabError(
            f"`{' '.join(argv)}` exited {done.returncode}: {done.stderr.decode(errors='replace')}"
            + (f"\ninput:\n{input.decode()}" if input else "")
        )
    return done.stdout.decode()


def lab_namespaces() -> list[str]:
    """Names of every network namespace that a lab created and did not delete yet."""
    out = run_command(["ip", "netns", "list"])
    return sorted(line.split()[0] for line in out.splitlines() if line.startswith(LAB_PREFIX))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _owner_pid(name: str) -> int | None:
    match = re.match(re.escape(LAB_PREFIX) + r"(\d+)-", name)
    return int(match.group(1)) if match else None


def kill_namespace_processes(ns: str) -> None:
    """SIGKILL every process inside namespace `ns` (daemons included) and wait until gone."""
    try:
        out = run_command(["ip", "netns", "pids", ns])
    except LabError:
        return
    pids = [int(p) for p in out.split()]
    waiters = []
    for pid in pids:
        try:
            waiters.append(os.pidfd_open(pid))
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
    deadline = time.monotonic() + STOP_GRACE_S
    try:
        for fd in waiters:
            # A pidfd turns readable when its process exits: a wait, not a poll loop.
            left = max(0.0, deadline - time.monotonic())
            if not select.select([fd], [], [], left)[0]:
                raise LabError(f"a process in namespace {ns} survived SIGKILL ({pids})")
    finally:
        for fd in waiters:
            os.close(fd)
    for pid in pids:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # reap the ones that were our children


def sweep_stale_labs() -> list[str]:
    """Delete namespaces and work directories left by labs whose owning process is gone.

    Labs of live processes (another test run at the same time) are left alone. Returns the
    namespaces deleted.
    """
    swept = []
    for ns in lab_namespaces():
        owner = _owner_pid(ns)
        if owner is None or _pid_alive(owner):
            continue
        kill_namespace_processes(ns)
        with contextlib.suppress(LabError):
            run_command(["ip", "netns", "del", ns])
            swept.append(ns)
    for path in Path(tempfile.gettempdir()).glob(f"{LAB_PREFIX}*"):
        owner = _owner_pid(path.name)
        if owner is not None and not _pid_alive(owner):
            shutil.rmtree(path, ignore_errors=True)
    return swept


def missing_prerequisites() -> list[str]:
    """What this machine lacks to build a lab (empty when it can): root, nft, /dev/net/tun."""
    missing = []
    if os.geteuid() != 0:
        missing.append("root (network namespaces need CAP_NET_ADMIN; run the tests as root)")
    if shutil.which("nft") is None:
        missing.append("the `nft` command (apt-get install nftables)")
    if not Path("/dev/net/tun").exists():
        missing.append("/dev/net/tun (load the tun module or give the container the device)")
    return missing


def wait_until(condition: Callable[[], bool], within: float, what: str) -> float:
    """Poll `condition` (it asks another process: a command, a scrape) until it holds, at most
    `within` seconds; returns the seconds it took. Raises AssertionError naming `what`."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > within:
            raise AssertionError(f"not within {within:g} s: {what}")
        time.sleep(0.1)
    return time.monotonic() - start
