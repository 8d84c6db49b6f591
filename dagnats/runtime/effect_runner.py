"""Carrying out one effect the kernel decided: a task published, a timer armed or cancelled,
a run linked (children, parents, successors, external events, notices).

Each effect is idempotent (message ids, timer ids), so running one again after a crash, or
running it twice from two engines, does no harm. The engine runs them after the decision is
appended and before the command is acked.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from typing import assert_never

from dagnats.runtime.links import RunLinks
from dagnats.runtime.protocols import TaskPublisher, Timers
from dagnats.runtime.resources import task_lane
from kernel import codec
from kernel.effects import (
    AnyEffect,
    ArmTimer,
    CancelChild,
    CancelTimer,
    EnqueueTask,
    PublishNotice,
    ReportToParent,
    SendCommand,
    StartChild,
    StartContinuation,
    WatchEvents,
)
from kernel.errors import DagnatsError

log = logging.getLogger("dagnats.engine")


async def run_effect(
    effect: AnyEffect, tasks: TaskPublisher, timers: Timers, links: RunLinks | None
) -> None:
    """Carry out `effect`.

    Raises:
        DagnatsError: a linking effect on an engine with no links.
    """
    match effect:
        case EnqueueTask():
            await enqueue_task(effect, tasks)
        case ArmTimer():
            await timers.arm(
                effect.run_id, effect.timer_id, effect.fire_at_ms, codec.encode(effect.command)
            )
        case CancelTimer():
            await timers.cancel(effect.run_id, effect.timer_id)
        case PublishNotice() if links is None:
            # A notice is a courtesy (what it tells is in history and the query tables); an
            # engine with no NATS links (the simulator) skips it.
            log.debug("run %s: notice skipped (no links)", effect.run_id)
        case (
            StartChild() | ReportToParent() | CancelChild() | WatchEvents() | PublishNotice()
            | StartContinuation() | SendCommand()
        ):  # fmt: skip
            if links is None:
                raise DagnatsError(f"this engine cannot link runs: {effect!r}")
            await links.execute(effect)
        case _:
            assert_never(effect)


def enqueue_task(effect: EnqueueTask, tasks: TaskPublisher) -> Awaitable[None]:
    """The task message of `effect`, published on its lane (README "Worker groups"): the
    publish's own awaitable (the engine's hot path awaits it with no frame between)."""
    return tasks.publish(task_lane(effect.task, effect.group), codec.encode(effect), effect.msg_id)
