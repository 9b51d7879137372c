"""One helper for the nurseries that meshcore objects hide inside their `async with`.

trio nurseries raise `ExceptionGroup`s; a caller of `open_transport` should see the one
exception that explains what happened, not a group of it and the cancellations it caused.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import NoReturn

import trio

from meshcore.errors import MeshError

__all__ = ["collapse_exception_group", "open_hidden_nursery"]


@asynccontextmanager
async def open_hidden_nursery() -> AsyncIterator[trio.Nursery]:
    """Open a nursery for background tasks that serve the body and never outlive it.

    The background tasks run until the body has ended, its own `finally` clauses included,
    even when an outer cancel scope cancelled the body: so a body that shuts down gracefully
    on its way out (a session sending its Close, a transport its close frame, each under a
    shielded, bounded scope) still has the tasks that do the sending. Then they are
    cancelled. What escapes is never an exception group but one exception, chosen by
    `collapse_exception_group`:

    - a `KeyboardInterrupt` (or other non-`Exception` such as `SystemExit`) from anywhere;
    - else the body's own exception (the user's error, or the `trio.Cancelled` of an outer
      cancel scope, which is never swallowed);
    - else the background task's failure, a `MeshError` in preference to anything else.

    A background failure cancels the body at once, as in any nursery. Failures that lose
    the choice above are kept as the winner's `__context__` (when it has none) and are named
    in a note, so nothing disappears silently.
    """
    body_error: BaseException | None = None
    tasks_scope = trio.CancelScope()
    try:
        async with trio.open_nursery() as outer:
            tasks: trio.Nursery = await outer.start(_run_tasks, tasks_scope)
            # shielded only now: a host task cancelled while starting never moves into
            # `outer` (trio's start), and shielded it would wait there forever
            tasks_scope.shield = True
            try:
                # the host may have run, and met an outer cancellation, before it was
                # shielded: then its nursery is closed, and the body must not start (it is
                # cancelled too)
                await trio.lowlevel.checkpoint_if_cancelled()
                yield tasks
            except BaseException as exc:
                body_error = exc
                raise
            finally:
                tasks_scope.cancel()
    except BaseExceptionGroup as group:
        _reraise(collapse_exception_group(group, body_error))
    # the tasks were shielded: an outer cancellation that reached nothing else must still
    # be seen by the code after the block
    await trio.lowlevel.checkpoint_if_cancelled()


async def _run_tasks(
    scope: trio.CancelScope, *, task_status: trio.TaskStatus[trio.Nursery]
) -> None:
    """Host the background tasks under `scope` (shielded once started; cancelled when the
    body ended)."""
    with scope:
        async with trio.open_nursery() as tasks:
            task_status.started(tasks)
            await trio.sleep_forever()


def collapse_exception_group(
    group: BaseExceptionGroup[BaseException], body_error: BaseException | None = None
) -> BaseException:
    """Pick the one exception that best explains `group` (see `open_hidden_nursery`).

    `body_error` is the exception the nursery's body raised, if any; it wins over background
    failures unless it is a `trio.Cancelled` caused by one of them.
    """
    leaves = _leaves(group, body_error)
    interrupts = [e for e in leaves if not isinstance(e, Exception | trio.Cancelled)]
    failures = [e for e in leaves if isinstance(e, Exception)]
    if interrupts:
        winner = interrupts[0]
    elif body_error is not None and not isinstance(body_error, trio.Cancelled):
        winner = body_error
    elif failures:
        winner = next((e for e in failures if isinstance(e, MeshError)), failures[0])
    else:
        # Only cancellations: one of them stands for all (the cancel scope that caused them
        # catches it just as it would catch the group).
        return body_error if body_error is not None else leaves[0]
    others = [e for e in leaves if e is not winner and not isinstance(e, trio.Cancelled)]
    if others:
        for other in others:
            winner.add_note(f"meshcore: a background task also failed: {other!r}")
        if winner.__context__ is None:
            winner.__context__ = BaseExceptionGroup("other failures", others)
    return winner


def _leaves(exc: BaseException, keep: BaseException | None) -> list[BaseException]:
    """The exceptions inside `exc`, depth first, in order; `keep` is not opened even if a group.

    `keep` is the body's exception: a group raised by the user's own code stays whole.
    """
    if isinstance(exc, BaseExceptionGroup) and exc is not keep:
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub, keep)]
    return [exc]


def _reraise(exc: BaseException) -> NoReturn:
    """Raise `exc` without making the group it came from its `__context__`.

    The group contains `exc` itself, so chaining it would print every error twice.
    """
    context = exc.__context__
    try:
        raise exc
    finally:
        exc.__context__ = context
        del exc, context
