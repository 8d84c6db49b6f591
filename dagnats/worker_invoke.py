"""A handler's outcome as a value (`Returned` or `Raised`), whatever it raises: the worker
runs each handler through `invoke` (in a task of its own, when the attempt has a deadline) or
`invoke_here` (in the caller's task), so nothing a handler raises, BaseException included,
reaches the event loop or ends the worker's job.

`start_job` starts a worker's job (one task message) at once: the job runs up to its first
real wait (a handler's own I/O, or the result's acknowledgement) in the read-loop callback
that brought its message, instead of one loop iteration later (a loop iteration, its poll of
the selector included, and ~30 us of a chain step's critical path). On 3.12+ that is
`eager_start`. On 3.11 the task is made as usual and its first step, which the loop queued
last in its ready queue, is taken from there and run now, as `eager_start` runs it: in the
task's own context and as the current task (the caller's task is set aside meanwhile, so
`asyncio.current_task()` in a handler, and `asyncio.timeout`, see the job's task). Where the
loop is not the standard one (no ready queue, or its last entry is not that step) the job is
left to the loop, as before.

This module runs the handler it is given and nothing else: no I/O of its own.
"""

from __future__ import annotations

import asyncio
import collections
import sys
from asyncio import tasks as asyncio_tasks
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
    """A task running `job`, started at once (its first step runs now, in the caller: what it
    does before its first wait is done when this returns, and it may be done already); on a
    loop that is not the standard one, under 3.11, scheduled for the next loop iteration."""
    loop = asyncio.get_running_loop()
    if sys.version_info >= (3, 12):
        return asyncio.Task(job, loop=loop, eager_start=True)
    task = loop.create_task(job)
    _step_now(loop, task)
    return task


def _step_now(loop: asyncio.AbstractEventLoop, task: asyncio.Task[None]) -> bool:
    """Run the first step of `task`, just made, now (Python 3.11: see the module); False when
    it is left to the loop."""
    ready = getattr(loop, "_ready", None)  # (BaseEventLoop's queue of handles to run)
    if not isinstance(ready, collections.deque) or not ready:
        return False
    handle = ready[-1]
    if getattr(getattr(handle, "_callback", None), "__self__", None) is not task:
        return False
    ready.pop()
    current = asyncio.current_task(loop)
    if current is not None:
        asyncio_tasks._leave_task(loop, current)
    try:
        handle._run()  # (the task's step: it sets itself current while it runs)
    finally:
        if current is not None:
            asyncio_tasks._enter_task(loop, current)
    return True
