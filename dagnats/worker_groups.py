"""A worker's groups and its entry in the worker directory.

Worker groups (README "Worker groups"): a step with `"group": "gpu"` has its tasks published
on the grouped lane `<task_type>@gpu` (runtime/resources.task_lane); a worker started with
`--group gpu` (`Worker(groups=["gpu"])`) fetches from the lanes of its groups only, one
durable consumer per lane, and a worker without groups from the ungrouped lanes only (as
Celery's `-Q` or Temporal's task queues: a grouped worker is set apart for its groups).

Presence: while it serves, a worker whose task queue says under which credential user it may
announce itself (`directory_user`, set by runtime/connection) rewrites its directory entry
every `beat_interval_ms` and deletes it when it stops (runtime/workers_directory). A failed
write is logged once and retried at the next beat; it never stops the worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Protocol

from dagnats.runtime import settings
from dagnats.runtime.resources import SubjectTokenError, check_token, task_lane
from dagnats.runtime.workers_directory import DirectoryWriter, WorkerEntry

log = logging.getLogger("dagnats.worker")
concurrency_max = 10_000


def check_concurrency(concurrency: object) -> int:
    """`concurrency` when it is a whole number of handler slots within 1..concurrency_max.

    Raises:
        ValueError: naming the value and the rule.
    """
    if not isinstance(concurrency, int) or isinstance(concurrency, bool):
        raise ValueError(f"concurrency {concurrency!r} must be a whole number of handler slots")
    if not 1 <= concurrency <= concurrency_max:
        raise ValueError(
            f"concurrency {concurrency} must be within 1..{concurrency_max} "
            "(handlers run at once; 0 would never run one)"
        )
    return concurrency


class Announced(Protocol):
    """What the directory entry says of a worker (dagnats.worker.Worker)."""

    worker_id: str
    groups: tuple[str, ...]
    concurrency: int
    beat_interval_ms: int

    now_ms: Callable[[], int]

    @property
    def handlers(self) -> Mapping[str, object]: ...

    def in_flight_count(self) -> int: ...


def check_groups(groups: Iterable[str]) -> tuple[str, ...]:
    """The groups, each a subject token, at most `worker_groups_max`, without repeats.

    Raises:
        ValueError: naming the group and the rule.
    """
    checked: list[str] = []
    for group in groups:
        if not isinstance(group, str):
            raise ValueError(f"group {group!r} must be a string")
        try:
            check_token("group", group, settings.worker_group_length_max)
        except SubjectTokenError as error:
            raise ValueError(str(error)) from None
        if group not in checked:
            checked.append(group)
    if len(checked) > settings.worker_groups_max:
        raise ValueError(
            f"groups: {len(checked)} given; a worker serves at most {settings.worker_groups_max}"
        )
    return tuple(checked)


def lanes(task_types: Iterable[str], groups: Sequence[str]) -> list[str]:
    """What a worker fetches: its task types, or with groups each type in each group."""
    types = sorted(task_types)
    if not groups:
        return types
    return [task_lane(task_type, group) for task_type in types for group in groups]


class Presence:
    """Keeps one worker's directory entry fresh while it serves."""

    def __init__(self, writer: DirectoryWriter, worker: Announced) -> None:
        interval_ms = worker.beat_interval_ms
        assert interval_ms >= settings.worker_beat_interval_ms_min, interval_ms
        self.writer = writer
        self.worker = worker
        self.interval_ms = interval_ms
        self.started_ms = worker.now_ms()
        self._failing = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        assert self._task is None, "started twice"
        self._task = asyncio.create_task(self._beat())

    async def stop(self, worker_id: str) -> None:
        """Stop beating and delete the entry (bounded by the publish timeout)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if not self.writer.connected():
            return  # (the entry expires by itself; a delete now would wait out its timeout)
        with contextlib.suppress(Exception):
            await self.writer.remove(worker_id)

    def describe(self) -> WorkerEntry:
        worker = self.worker
        return WorkerEntry(
            worker_id=worker.worker_id,
            user=self.writer.user,
            task_types=tuple(sorted(worker.handlers)),
            groups=worker.groups,
            concurrency=worker.concurrency,
            in_flight=worker.in_flight_count(),
            heartbeat_ms=worker.now_ms(),
            beat_interval_ms=self.interval_ms,
            started_ms=self.started_ms,
        )

    async def _beat(self) -> None:
        while True:
            try:
                await self.writer.put(self.describe())
            except Exception as error:
                if not self.writer.connected():
                    pass  # the connection's outage log tells of it, once
                elif not self._failing:
                    log.warning("worker directory: cannot write this worker's entry (%s: %s); "
                                "trying again every beat", type(error).__name__, error)  # fmt: skip
                    self._failing = True
            else:
                if self._failing:
                    log.info("worker directory: this worker's entry is written again")
                self._failing = False
            await asyncio.sleep(self.interval_ms / 1000)


def presence_of(tasks: object, worker: Announced) -> Presence | None:
    """A Presence for a worker fetching from `tasks`, when that queue can announce it (a
    JetStream queue with a `directory_user`), else None (the simulator's queue)."""
    user = getattr(tasks, "directory_user", None)
    js = getattr(tasks, "js", None)
    if not isinstance(user, str) or js is None:
        return None
    return Presence(DirectoryWriter(js, user), worker)
