"""The local control socket of a running peer: `meshcore-peer status` and `ping` ask the
peer process about its sessions over a UNIX socket that only its owner can open.

The protocol is one JSON object per line: a request `{"cmd": "status"}`,
`{"cmd": "ping", "peer": ID, "count": N, "interval": S, "until_direct": B}` or
`{"cmd": "relays"}` (the relays the peer uses, as its `SessionRegistry.relays` reports them),
answered by one JSON object per line and a final `{"done": true}` (or `{"error": "..."}`). A
ping's answers are one per reply (`seq`, `rtt_ms`, `path`, `address`, `relay`, or `seq` and
`error`) and a last `{"summary": true, "direct": B, ...}` saying where the session is now.
last `{"summary": true, "direct": B, ...}` saying where the session is now.

The registry also keeps the sum of the counters of the sessions that ended, so that the
peer's metrics (`meshcore._metrics_peer`) only ever grow.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket as stdlib_socket
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import attrs
import trio

from meshcore._counters import SessionCounters
from meshcore.errors import ConfigError, ControlRequestFailed, MeshError

__all__ = [
    "SessionRegistry",
    "control_request",
    "default_control_path",
    "serve_control",
]

log = logging.getLogger("meshcore.control")

_MAX_LINE = 64 * 1024
_PING_TIMEOUT_S = 5.0
_MAX_PINGS = 1000
_MAX_PING_INTERVAL_S = 60.0


class _Reportable(Protocol):
    @property
    def close_reason(self) -> str | None: ...

    def status(self) -> Any: ...

    def counters(self) -> SessionCounters: ...

    async def ping(self, timeout: float) -> tuple[float, str]: ...


def default_control_path() -> Path:
    """Where a peer listens for status/ping requests unless told otherwise."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    base = Path(runtime) if runtime else Path("/tmp")
    return base / f"meshcore-peer-{os.getuid()}.sock"


class SessionRegistry:
    """The sessions a peer process runs now, for the control socket and the metrics.

    A session that ended (closed by either side, finished or failed) is no longer listed,
    even while the code that registered it is still winding down (a command stopping).

    `names` gives peers a label for displays (peer id text -> name, e.g. from `up`'s
    `[[peers]]` table).
    """

    def __init__(self, names: Mapping[str, str] | None = None) -> None:
        self._sessions: list[_Reportable] = []
        self.relays: Callable[[], dict[str, Any]] | None = None
        """What the `relays` request answers: a JSON-ready report of the relays the peer
        uses (set by whoever holds its relay connections; None: none to report)."""
        self._names = dict(names or {})
        self._ended = SessionCounters()

    @contextmanager
    def registered(self, session: _Reportable) -> Iterator[None]:
        """Make `session` visible to status and ping while the block runs and it is open;
        when the block ends, its counters go into the registry's totals."""
        self._sessions.append(session)
        try:
            yield
        finally:
            self._sessions.remove(session)
            self._ended = self._ended + session.counters()

    def name_of(self, peer_id: str) -> str | None:
        """The label configured for `peer_id` (its text form), if any."""
        return self._names.get(peer_id)

    def live(self) -> list[_Reportable]:
        """The registered sessions that have not ended."""
        return [s for s in self._sessions if s.close_reason is None]

    def statuses(self) -> list[dict[str, Any]]:
        """One JSON-ready dict per live session (its status, and `name`)."""
        out = []
        for session in self.live():
            entry = _jsonable(session.status())
            entry["name"] = self._names.get(str(entry.get("peer_id")))
            out.append(entry)
        return out

    def sessions(self) -> list[_Reportable]:
        """Every registered session (a copy), including ones that ended and are winding
        down: their counters count until they leave (the metrics' totals only grow)."""
        return list(self._sessions)

    def ended_counters(self) -> SessionCounters:
        """The sum of the counters of every session that has ended."""
        return self._ended

    def find(self, peer: str) -> _Reportable | None:
        """The live session with `peer`: a peer id's text form, a unique prefix of it, or a
        name."""
        matches = []
        for session in self.live():
            peer_id = str(_jsonable(session.status())["peer_id"])
            if peer_id.startswith(peer) or (peer and self._names.get(peer_id) == peer):
                matches.append(session)
        return matches[0] if len(matches) == 1 else None


def _jsonable(status: Any) -> dict[str, Any]:
    data = attrs.asdict(status) if attrs.has(type(status)) else dict(status)
    return {
        k: (v if isinstance(v, int | float | str | bool | None) else str(v))
        for k, v in data.items()
    }


async def _answer(stream: trio.SocketStream, registry: SessionRegistry) -> None:
    buffer = b""
    while b"\n" not in buffer:
        chunk = await stream.receive_some(4096)
        if not chunk:
            return
        buffer += chunk
        if len(buffer) > _MAX_LINE:
            await _send(stream, {"error": "request too long"})
            return
    try:
        request = json.loads(buffer.split(b"\n", 1)[0])
        cmd = request["cmd"]
    except (ValueError, KeyError, TypeError):
        await _send(stream, {"error": "bad request: expected a JSON object with a cmd"})
        return
    if cmd == "status":
        for entry in registry.statuses():
            await _send(stream, entry)
    elif cmd == "ping":
        session = registry.find(str(request.get("peer", "")))
        if session is None:
            await _send(stream, {"error": f"no session with peer {request.get('peer')!r}"})
            return
        try:
            count = max(1, min(int(request.get("count", 1)), _MAX_PINGS))
            interval = max(0.0, min(float(request.get("interval", 1.0)), _MAX_PING_INTERVAL_S))
            until_direct = bool(request.get("until_direct", False))
        except (TypeError, ValueError):
            await _send(stream, {"error": "bad request: count and interval must be numbers"})
            return
        await _ping(stream, session, count, interval, until_direct)
    elif cmd == "relays":
        if registry.relays is None:
            await _send(stream, {"error": "this peer is not connected to any relay yet"})
            return
        await _send(stream, registry.relays())
    else:
        await _send(stream, {"error": f"unknown command {cmd!r}"})
        return
    await _send(stream, {"done": True})


async def _ping(
    stream: trio.SocketStream,
    session: _Reportable,
    count: int,
    interval: float,
    until_direct: bool,
) -> None:
    """Ping `session` `count` times, `interval` apart (stopping at the first reply over a
    direct path if `until_direct`), one answer per reply, then a summary."""
    for seq in range(count):
        try:
            rtt, path = await session.ping(_PING_TIMEOUT_S)
        except (MeshError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            await _send(stream, {"seq": seq, "error": str(exc) or type(exc).__name__})
        else:
            status = _jsonable(session.status())
            reply = {"seq": seq, "rtt_ms": round(rtt * 1e3, 3), "path": path}
            reply["address"] = status.get("remote_address") if path == "direct" else None
            reply["relay"] = status.get("relay")
            await _send(stream, reply)
            if until_direct and path == "direct":
                break
        if seq + 1 < count:
            await trio.sleep(interval)
    status = _jsonable(session.status())
    direct = status.get("path") == "direct"
    await _send(
        stream,
        {
            "summary": True,
            "direct": direct,
            "address": status.get("remote_address") if direct else None,
            "relay": status.get("relay"),
            "not_direct_reason": status.get("not_direct_reason"),
        },
    )


async def _send(stream: trio.SocketStream, obj: dict[str, Any]) -> None:
    await stream.send_all(json.dumps(obj).encode() + b"\n")


async def serve_control(
    path: Path,
    registry: SessionRegistry,
    *,
    required: bool = True,
    task_status: trio.TaskStatus[Path | None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Answer status and ping requests on the UNIX socket `path` until cancelled.

    The socket is created with mode 0600 and removed on exit. If another running peer
    already answers on `path`, raises `ConfigError` when `required`, else logs a warning
    and serves nothing (`task_status.started(None)`). Cancellation stops the requests in
    progress and removes the socket.
    """
    in_use = (
        f"control socket {path} is in use by another running peer: "
        "pass --control PATH to use another one"
    )
    if path.exists():
        if await _is_live(path):
            if required:
                raise ConfigError(in_use)
            log.warning("%s; status and ping are unavailable for this process", in_use)
            task_status.started(None)
            return
        path.unlink(missing_ok=True)
    sock = trio.socket.socket(stdlib_socket.AF_UNIX, stdlib_socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        await sock.bind(str(path))
    except OSError as exc:
        sock.close()
        if exc.errno != errno.EADDRINUSE:
            raise ConfigError(f"cannot create control socket {path}: {exc.strerror}") from exc
        # another peer starting at the same moment bound it between our check and our bind
        if required:
            raise ConfigError(in_use) from None
        log.warning("%s; status and ping are unavailable for this process", in_use)
        task_status.started(None)
        return
    finally:
        os.umask(old_umask)
    sock.listen(16)
    listener = trio.SocketListener(sock)

    async def handle(stream: trio.SocketStream) -> None:
        async with stream:
            try:
                with trio.fail_after(60):
                    await _answer(stream, registry)
            except (trio.BrokenResourceError, trio.TooSlowError):
                pass

    try:
        async with listener, trio.open_nursery() as nursery:
            task_status.started(path)
            while True:
                stream = await listener.accept()
                nursery.start_soon(handle, stream)
    finally:
        with trio.CancelScope(shield=True):
            try:
                path.unlink()
            except FileNotFoundError:
                pass


async def _is_live(path: Path) -> bool:
    try:
        with trio.move_on_after(1.0):
            stream = await trio.open_unix_socket(str(path))
            await stream.aclose()
            return True
    except OSError:
        return False
    return False


async def control_request(path: Path, request: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
    """Send one request to a running peer and yield its answers until it is done.

    Raises `ControlRequestFailed` naming the socket if no peer answers there. Cancellation
    (or leaving the iteration) closes the connection.
    """
    try:
        stream = await trio.open_unix_socket(str(path))
    except OSError as exc:
        raise ControlRequestFailed(
            f"no running peer answers on {path} ({exc.strerror}): start `meshcore-peer "
            "connect`/`listen` first, or pass the --control PATH it uses"
        ) from exc
    async with stream:
        await stream.send_all(json.dumps(request).encode() + b"\n")
        buffer = b""
        while True:
            chunk = await stream.receive_some(65536)
            if not chunk:
                return
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                answer = json.loads(line)
                if answer.get("done"):
                    return
                if "error" in answer and "seq" not in answer:
                    raise ControlRequestFailed(str(answer["error"]))
                yield answer
