"""The local control socket of a running peer: `meshcore-peer status` and `ping` ask the
peer process about its sessions over a UNIX socket that only its owner can open.

The protocol is one JSON object per line: a request `{"cmd": "status"}`,
`{"cmd": "ping", "peer": ID, "count": N}` or `{"cmd": "relays"}` (the relays the peer uses,
as its `SessionRegistry.relays` reports them), answered by one JSON object per line and a
final `{"done": true}` (or `{"error": "..."}`).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket as stdlib_socket
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import attrs
import trio

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


class _Reportable(Protocol):
    def status(self) -> Any: ...

    async def ping(self, timeout: float) -> tuple[float, str]: ...


def default_control_path() -> Path:
    """Where a peer listens for status/ping requests unless told otherwise."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    base = Path(runtime) if runtime else Path("/tmp")
    return base / f"meshcore-peer-{os.getuid()}.sock"


class SessionRegistry:
    """The sessions a peer process runs now, for the control socket."""

    def __init__(self) -> None:
        self._sessions: list[_Reportable] = []
        self.relays: Callable[[], dict[str, Any]] | None = None
        """What the `relays` request answers: a JSON-ready report of the relays the peer
        uses (set by whoever holds its relay connections; None: none to report)."""

    @contextmanager
    def registered(self, session: _Reportable) -> Iterator[None]:
        """Make `session` visible to status and ping while the block runs."""
        self._sessions.append(session)
        try:
            yield
        finally:
            self._sessions.remove(session)

    def statuses(self) -> list[dict[str, Any]]:
        """One JSON-ready dict per session."""
        return [_jsonable(session.status()) for session in self._sessions]

    def find(self, peer: str) -> _Reportable | None:
        """The session with `peer` (a peer id's text form, or a unique prefix of it)."""
        matches = [
            s for s in self._sessions if str(_jsonable(s.status())["peer_id"]).startswith(peer)
        ]
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
        for seq in range(max(1, min(int(request.get("count", 1)), 1000))):
            try:
                rtt, path = await session.ping(_PING_TIMEOUT_S)
                await _send(stream, {"seq": seq, "rtt_ms": round(rtt * 1e3, 3), "path": path})
            except (MeshError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                await _send(stream, {"seq": seq, "error": str(exc) or type(exc).__name__})
            await trio.sleep(float(request.get("interval", 1.0)))
    elif cmd == "relays":
        if registry.relays is None:
            await _send(stream, {"error": "this peer is not connected to any relay yet"})
            return
        await _send(stream, registry.relays())
    else:
        await _send(stream, {"error": f"unknown command {cmd!r}"})
        return
    await _send(stream, {"done": True})


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
