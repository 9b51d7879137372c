"""A path driver's handle on a session (`PathControl`, from `Session.attach_driver`) and what
the session asks of the driver (`PathDriver`): the races, the links the driver brings, the
commands of the session's path policy (docs/direct.md)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

import trio

from meshcore._link import Link
from meshcore._transport import Transport
from meshcore.proto.endpoint import Endpoint
from meshcore.proto.paths import PathCommand
from meshcore.proto.session import SessionState

if TYPE_CHECKING:
    from meshcore._session import Session

__all__ = ["PathControl", "PathDriver"]


class PathDriver(Protocol):
    """What a Session asks of the driver that moves it between paths (a `Migrator`), which
    registers with `Session.attach_driver`."""

    def wake(self) -> None:
        """The session's path policy has commands: take them soon with
        `PathControl.commands()` (not from inside this call)."""

    def endpoints_received(self, endpoints: tuple[Endpoint, ...]) -> None:
        """The peer announced its direct-path candidates (an ENDPOINTS frame)."""

    def abort_direct(self, reason: str) -> bool:
        """Cut the direct connection now (`Session.force_fallback`); False if there is none."""

    def relay_of(self, transport: Transport) -> str | None:
        """The relay a relay circuit runs through (its URL; None: unknown). A session keeps
        at most one circuit per relay."""


class PathControl:
    """A path driver's hold on one session, from `Session.attach_driver`: the races, the links
    it brings, the commands of the session's path policy.

    Every call that changes the path state brings the session up to date at once (events,
    frames to send, timers). Nothing here blocks; the driver runs each link it brings with
    `Session.run_link` in a nursery of its own.
    """

    __slots__ = ("_driver", "_session")

    def __init__(self, session: Session, driver: PathDriver) -> None:
        self._session = session
        self._driver = driver

    @property
    def racing(self) -> bool:
        """A race for a direct path is running."""
        return self._session._paths.race is not None

    @property
    def may_race(self) -> bool:
        """A race may start now: none is running, there is no direct path, the mode allows."""
        return self._session._paths.manager.may_race()

    @property
    def direct_link(self) -> Link | None:
        """The direct connection carrying the session, if any."""
        direct = self._session._paths.manager.direct
        return direct if isinstance(direct, Link) else None

    def commands(self) -> list[PathCommand]:
        """Take the I/O the path policy asks for (races, closing links, re-opening the relay
        circuit, log lines)."""
        with self._session._lock:
            return self._session._paths.commands()

    def owns_receiver_index(self, receiver_index: int) -> bool:
        """Is `receiver_index` one of this open session's (a connection's first frame names
        the index its sender chose for us)?"""
        core = self._session._core
        return core.state is SessionState.OPEN and receiver_index in core.keys.receiver_indices(
            trio.current_time()
        )

    def start_race(self, endpoints: Sequence[Endpoint]) -> bool:
        """A race starts: `endpoints` (ours) are announced to the peer in ENDPOINTS. False if
        a race is running already or the session has ended."""
        session = self._session
        paths = session._paths
        with session._lock:
            if paths.racing or session._core.state is not SessionState.OPEN:
                return False
            paths.race_started(trio.current_time(), endpoints)
            session._changed()
        return True

    def race_failed(self, reason: str) -> None:
        """The race's deadline passed without a winner: its candidates are closed."""
        session = self._session
        with session._lock:
            if session._paths.race is None:
                return
            session._paths.race_failed(reason, trio.current_time())
            session._changed()

    def attach_candidate(
        self, transport: Transport, *, first_frame: bytes | None = None
    ) -> Link | None:
        """A direct connection for the running race, dialled or accepted (with the
        `first_frame` it arrived with): it is challenged at once.

        Returns the link to run with `Session.run_link`, or None if no race takes it (none
        running, the race is full, the session ended): then close `transport`.
        """
        session = self._session
        link = session._new_link(transport, "direct")
        with session._lock:
            if not session._paths.candidate_up(link, trio.current_time()):
                return None
            self._arrived(link, first_frame)
        return link

    def attach_relay(
        self,
        transport: Transport,
        *,
        first_frame: bytes | None = None,
        opened_here: bool = False,
        spare: bool = False,
    ) -> Link | None:
        """A new relay circuit for the session: one the peer opened (with the `first_frame`
        it arrived with), or one we opened (`opened_here`: a keepalive goes out on it first,
        so that the peer can route it; `spare`: for an `OpenRelay(spare=True)`). It replaces
        the session's circuit on the same relay (`PathDriver.relay_of`), and carries the
        session if no other circuit does.

        Returns the link to run with `Session.run_link`, or None if the session has ended:
        then close `transport`.
        """
        session = self._session
        if session._core.state is not SessionState.OPEN:
            return None
        link = session._new_link(transport, "relay")
        if transport.relay_url is not None:
            session._relay_url = transport.relay_url
        with session._lock:
            session._paths.relay_up(
                link,
                trio.current_time(),
                opened_here=opened_here,
                relay=self._driver.relay_of(transport),
                spare=spare,
            )
            self._arrived(link, first_frame)
        return link

    def relay_open_failed(self, reason: str, *, spare: bool = False) -> None:
        """Opening a relay circuit failed; the policy tries again while it is needed."""
        with self._session._lock:
            self._session._paths.relay_open_failed(reason, trio.current_time(), spare=spare)
            self._session._changed()

    def detach(self) -> None:
        """The driver is done: the session no longer wakes it, and a lost link ends it."""
        if self._session._driver is self._driver:
            self._session._driver = None

    def _arrived(self, link: Link, first_frame: bytes | None) -> None:
        if first_frame is None:
            self._session._changed()
        else:
            self._session._on_frames(link, [first_frame])
