"""A handler's outcome as a value (`Returned` or `Raised`), whatever it raises: the worker
runs each handler through `invoke` (in a task of its own, when the attempt has a deadline) or
`invoke_here` (in the caller's task), so nothing a handler raises, BaseException included,
reaches the event loop or ends the worker's job.

`start_job` starts a worker's job (one task message) where Python can start a task at once
(3.12+, `eager_start`): the job runs up to its first real wait (a handler's own I/O, or the
result's acknowledgement) in the read-loop callback that brought its message, instead of one
loop iteration later: a no-op handler's result is written in the next iteration.

This module runs the handler it is given and nothing else: no I/O of its own.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dagnats.worker_context import TaskContext

Handler = Callable[["TaskContext"], Awaitable[object]]


class Returned:
    __slots__ = ("value",)

    def __init__(self, value: object) -> None:
        self.value = value


class Raised:
    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


async def invoke(handler: Handler, context: TaskContext) -> Returned | Raised:
    """The handler's outcome as a value: nothing it raises (BaseException included) leaves
    this task, so none reaches the event loop (which re-raises KeyboardInterrupt/SystemExit)
    or is left as "Task exception was never retrieved"."""
    try:
        return Returned(await handler(context))
    except BaseException as error:  # (that is the point)
        return Raised(error)


async def invoke_here(handler: Handler, context: TaskContext) -> Returned | Raised:
    """`invoke` in the caller's task (a task without a deadline: nothing cancels its handler
    but the worker, and a task per handler cost more than the rest of a no-op step's Python
    work). A cancellation of the caller's task (the drain's bound, a simulated crash) is the
    worker's, not the handler's: it goes on up; a CancelledError the handler raised itself
    is its failure, as in a task of its own."""
    try:
        return Returned(await handler(context))
    except asyncio.CancelledError as error:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise
        return Raised(error)
    except BaseException as error:  # (that is the point)
        return Raised(error)


def start_job(job: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
    """A task running `job`: started at once on Python 3.12+ (its first step runs now, in
    the caller: what it does before its first wait is done when this returns, and it may be
    done already), else scheduled for the next loop iteration (Python 3.11)."""
    loop = asyncio.get_running_loop()
    if sys.version_info >= (3, 12):
        return asyncio.Task(job, loop=loop, eager_start=True)
    return loop.create_task(job)
