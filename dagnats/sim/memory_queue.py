"""In-memory work queues and timers over virtual time (the rest is in `memory.py`).

`MemoryQueue` is a work queue with ack wait, redelivery, `nak` delays and a delivery bound (the
task queue and the command queue are two of them); `MemoryTimers` are durable timers that fire
into the command queue. As in `memory.py`, one process reaches them through ports bound to its
`Gate`, where the simulator injects faults; no method ever suspends.

This module may not read the wall clock, draw randomness or do I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from dagnats.runtime import settings as runtime_settings
from dagnats.runtime.protocols import QueueMessage
from dagnats.runtime.resources import command_subject, task_subject
from dagnats.sim import settings
from dagnats.sim.faults import PublishLostError
from dagnats.sim.memory import NEVER_MS, NO_FAULTS, Gate, VirtualTime
from kernel.errors import PayloadTooLargeError

COMMAND_PARTITIONS: Final = 1  # one engine consumer over every run: partitions play no part


# -- work queues --------------------------------------------------------------------------


@dataclass(slots=True, eq=False)
class QueueEntry:
    """One message of a work queue and its delivery state."""

    number: int  # its sequence in the queue's stream
    subject: str
    data: bytes
    msg_id: str
    published_at_ms: int
    available_at_ms: int
    deliveries: int = 0
    holder: object | None = None  # the consumer it is delivered to, until settled or expired
    deadline_ms: int = NEVER_MS  # its ack deadline while held
    done: bool = False


@dataclass(slots=True)
class QueueStats:
    published: int = 0
    deduplicated: int = 0
    delivered: int = 0
    redelivered: int = 0
    dropped: int = 0  # over the delivery bound: never delivered again


class MemoryQueue:
    """A work-queue stream with one durable consumer: dedup window, ack wait, redelivery,
    nak delays, a delivery bound. Subjects are kept so consumers can filter."""

    def __init__(
        self,
        time: VirtualTime,
        *,
        ack_wait_ms: int,
        deliver_max: int,
        duplicate_window_ms: int,
    ) -> None:
        assert ack_wait_ms > 0 and deliver_max >= 1 and duplicate_window_ms > 0
        self.time = time
        self.ack_wait_ms = ack_wait_ms
        self.deliver_max = deliver_max
        self.duplicate_window_ms = duplicate_window_ms
        self.entries: list[QueueEntry] = []  # not yet done, in stream order
        self.held = 0  # entries with a holder (`expire` has nothing to look at without one)
        self._msg_ids: dict[str, int] = {}
        self._number = 0
        self.stats = QueueStats()
        self.on_publish: list[Callable[[QueueEntry], None]] = []
        self.on_ack: list[Callable[[QueueEntry, object], None]] = []

    def publish_now(
        self, subject: str, data: bytes, msg_id: str, delay_ms: int = 0
    ) -> QueueEntry | None:
        """Enqueue; None when `msg_id` (if any) was seen within the duplicate window."""
        assert delay_ms >= 0
        now = self.time.now_ms
        if msg_id:
            seen_at = self._msg_ids.get(msg_id)
            if seen_at is not None and now - seen_at < self.duplicate_window_ms:
                self.stats.deduplicated += 1
                return None
            self._msg_ids[msg_id] = now
        self._number += 1
        entry = QueueEntry(
            number=self._number,
            subject=subject,
            data=data,
            msg_id=msg_id,
            published_at_ms=now,
            available_at_ms=now + delay_ms,
        )
        self.entries.append(entry)
        self.stats.published += 1
        for listener in self.on_publish:
            listener(entry)
        return entry

    def ready(self, subject: str | None = None) -> list[QueueEntry]:
        """Entries deliverable now (on `subject`, or any), in stream order."""
        now = self.time.now_ms
        return [
            entry
            for entry in self.entries
            if entry.holder is None
            and entry.available_at_ms <= now
            and (subject is None or entry.subject == subject)
        ]

    def has_ready(self) -> bool:
        """Whether any entry is deliverable now (`ready()` without building the list)."""
        now = self.time.now_ms
        for entry in self.entries:  # noqa: SIM110 (asked every pass: a loop costs a fourth of any())
            if entry.holder is None and entry.available_at_ms <= now:
                return True
        return False

    def ready_subjects(self) -> list[str]:
        """The subjects with an entry deliverable now, sorted."""
        now = self.time.now_ms
        subjects: list[str] = []
        for entry in self.entries:
            ready = entry.holder is None and entry.available_at_ms <= now
            if ready and entry.subject not in subjects:
                subjects.append(entry.subject)
        if len(subjects) > 1:
            subjects.sort()
        return subjects

    def deliver(self, entry: QueueEntry, holder: object, deadline_ms: int | None = None) -> int:
        """Hand `entry` to `holder` until its ack deadline; returns the delivery number."""
        assert entry.holder is None and not entry.done
        assert entry.deliveries < self.deliver_max
        entry.deliveries += 1
        entry.holder = holder
        self.held += 1
        entry.deadline_ms = (
            deadline_ms if deadline_ms is not None else self.time.now_ms + self.ack_wait_ms
        )
        self.stats.delivered += 1
        if entry.deliveries > 1:
            self.stats.redelivered += 1
        return entry.deliveries

    def ack(self, entry: QueueEntry, holder: object) -> None:
        if entry.done:
            return
        self._finish(entry)
        for listener in self.on_ack:
            listener(entry, holder)

    def nak(self, entry: QueueEntry, delay_ms: int) -> None:
        assert delay_ms >= 0
        if not entry.done:
            self._release(entry, self.time.now_ms + delay_ms)

    def extend(self, entry: QueueEntry, deadline_ms: int) -> None:
        """The holder is still working (a heartbeat): its ack deadline moves."""
        if not entry.done and entry.holder is not None:
            entry.deadline_ms = deadline_ms

    def term(self, entry: QueueEntry) -> None:
        if not entry.done:
            self._finish(entry)

    def expire(self) -> list[QueueEntry]:
        """Release every held entry whose ack deadline passed (it will be redelivered)."""
        expired: list[QueueEntry] = []
        if not self.held:  # (asked every scheduler pass)
            return expired
        now = self.time.now_ms
        for entry in self.entries:
            if entry.holder is not None and entry.deadline_ms <= now:
                expired.append(entry)
        for entry in expired:
            self._release(entry, now)
        return expired

    def next_due_ms(self) -> int | None:
        """The next time something changes by itself: an entry becomes available, or a held
        entry's ack deadline passes."""
        due: int | None = None
        for entry in self.entries:
            at = entry.deadline_ms if entry.holder is not None else entry.available_at_ms
            if at < NEVER_MS and (due is None or at < due):
                due = at
        return due

    def release_holder(self, holder: object, deadline_ms: int) -> None:
        """The holder died: its entries come back when their ack wait runs out."""
        for entry in self.entries:
            if entry.holder is holder:
                entry.deadline_ms = min(entry.deadline_ms, deadline_ms)

    def pending(self) -> int:
        return len(self.entries)

    def _release(self, entry: QueueEntry, available_at_ms: int) -> None:
        if entry.holder is not None:
            self.held -= 1
        entry.holder = None
        entry.deadline_ms = NEVER_MS
        if entry.deliveries >= self.deliver_max:
            self.stats.dropped += 1
            self._finish(entry)
            return
        entry.available_at_ms = available_at_ms

    def _finish(self, entry: QueueEntry) -> None:
        entry.done = True
        if entry.holder is not None:
            self.held -= 1
        entry.holder = None
        self.entries.remove(entry)
        assert self.held >= 0, self.held


class MemoryMessage:
    """`protocols.QueueMessage`: one delivery of a queue entry to one holder."""

    __slots__ = ("_delivery", "_gate", "_holder", "_queue", "entry")

    def __init__(
        self, queue: MemoryQueue, entry: QueueEntry, holder: object, gate: Gate = NO_FAULTS
    ) -> None:
        self._queue = queue
        self.entry = entry
        self._holder = holder
        self._gate = gate
        self._delivery = entry.deliveries

    @property
    def subject(self) -> str:
        return self.entry.subject

    @property
    def data(self) -> bytes:
        return self.entry.data

    @property
    def num_delivered(self) -> int:
        return self._delivery

    def _current(self) -> bool:
        """Whether this delivery still holds the entry (a stale delivery settles nothing)."""
        return self.entry.holder is self._holder and self.entry.deliveries == self._delivery

    async def ack(self) -> None:
        self._gate.check("before_ack")
        if self._gate.lose("ack"):
            return  # lost on the way: the entry comes back after its ack wait
        if self._current():
            self._queue.ack(self.entry, self._holder)

    async def nak(self, delay_ms: int = 0) -> None:
        assert 0 <= delay_ms <= runtime_settings.nak_delay_ms_max
        self._gate.check("nak")
        if self._current():
            self._queue.nak(self.entry, delay_ms)

    async def in_progress(self) -> None:
        self._gate.check("in_progress")
        if self._current():
            self._queue.extend(self.entry, self._queue.time.now_ms + self._queue.ack_wait_ms)

    async def term(self) -> None:
        self._gate.check("term")
        if self._current():
            self._queue.term(self.entry)


def _check_size(field: str, payload: bytes) -> None:
    if len(payload) > runtime_settings.history_message_bytes_max:
        raise PayloadTooLargeError(field, len(payload), runtime_settings.history_message_bytes_max)


def new_task_queue(time: VirtualTime) -> MemoryQueue:
    """The tasks stream: the runtime's ack wait (heartbeat timeout), bound and window."""
    return MemoryQueue(
        time,
        ack_wait_ms=settings.task_ack_wait_ms,
        deliver_max=settings.task_deliver_max,
        duplicate_window_ms=settings.task_duplicate_window_ms,
    )


def new_command_queue(time: VirtualTime) -> MemoryQueue:
    """The commands stream with the engine's durable consumer."""
    return MemoryQueue(
        time,
        ack_wait_ms=settings.command_ack_wait_ms,
        deliver_max=settings.command_deliver_max,
        duplicate_window_ms=settings.command_duplicate_window_ms,
    )


@dataclass(slots=True)
class DeadLetter:
    kind: str
    payload: bytes
    reason: str
    at_ms: int


class TaskPort:
    """`protocols.TaskQueue` for one process (the engine publishes, workers fetch)."""

    __slots__ = ("gate", "holder", "queue")

    def __init__(self, queue: MemoryQueue, holder: object, gate: Gate = NO_FAULTS) -> None:
        self.queue = queue
        self.holder = holder
        self.gate = gate

    async def publish(self, task_type: str, payload: bytes, msg_id: str) -> None:
        _check_size("task message", payload)
        self.gate.check("publish_task")
        delay = settings.delivery_ms_max + self.gate.delay_ms("publish_task")
        self.queue.publish_now(task_subject(task_type), payload, msg_id, delay)

    async def fetch(self, task_type: str, *, batch: int, timeout_ms: int) -> list[MemoryMessage]:
        assert 1 <= batch <= runtime_settings.fetch_batch_max and timeout_ms > 0
        self.gate.check("fetch")
        entries = self.queue.ready(task_subject(task_type))[:batch]
        for entry in entries:
            self.queue.deliver(entry, self.holder)
        return [MemoryMessage(self.queue, entry, self.holder, self.gate) for entry in entries]


class CommandPort:
    """`protocols.CommandQueue` and `protocols.DeadLetters` for one process."""

    __slots__ = ("dead", "gate", "holder", "queue")

    def __init__(
        self,
        queue: MemoryQueue,
        dead: list[DeadLetter],
        holder: object,
        gate: Gate = NO_FAULTS,
    ) -> None:
        self.queue = queue
        self.dead = dead
        self.holder = holder
        self.gate = gate

    async def publish_command(
        self, run_id: str, payload: bytes, msg_id: str, *, token: str | None = None
    ) -> None:
        _check_size("command", payload)
        self.gate.check("publish_command")
        lost = self.gate.publish_lost("publish_command")
        if lost == "lost":
            raise PublishLostError(f"command {msg_id!r} lost on the way (no acknowledgement)")
        delay = settings.delivery_ms_max + self.gate.delay_ms("publish_command")
        subject = command_subject(run_id, COMMAND_PARTITIONS)
        self.queue.publish_now(subject, payload, msg_id, delay)
        if lost:
            raise PublishLostError(f"command {msg_id!r} stored; its acknowledgement was lost")

    async def fetch_commands(self, *, batch: int, timeout_ms: int) -> list[MemoryMessage]:
        assert 1 <= batch <= runtime_settings.fetch_batch_max and timeout_ms > 0
        self.gate.check("fetch")
        entries = self.queue.ready()[:batch]
        for entry in entries:
            self.queue.deliver(entry, self.holder)
        return [MemoryMessage(self.queue, entry, self.holder, self.gate) for entry in entries]

    async def publish_dead(self, kind: str, payload: bytes, reason: str) -> None:
        self.gate.check("publish_dead")
        at_ms = self.queue.time.now_ms
        self.dead.append(DeadLetter(kind=kind, payload=payload, reason=reason, at_ms=at_ms))


# -- timers -------------------------------------------------------------------------------


@dataclass(slots=True)
class ArmedTimer:
    run_id: str
    timer_id: str
    fire_at_ms: int
    payload: bytes
    armed_at_ms: int


@dataclass(slots=True)
class MemoryTimers:
    """Durable timers: armed by id (re-arming replaces), fired into the command queue."""

    time: VirtualTime
    commands: MemoryQueue
    armed: dict[tuple[str, str], ArmedTimer] = field(default_factory=dict)
    fired: int = 0
    # The earliest fire time armed (None: none armed), kept while `armed` changes only through
    # `arm`, `cancel` and `fire`: the scheduler asks every pass, over every run's timers.
    _earliest_ms: int | None = None
    _earliest_known: bool = True

    def due(self) -> list[ArmedTimer]:
        """Armed timers whose time has come, in (time, run, id) order."""
        now = self.time.now_ms
        timers = [timer for timer in self.armed.values() if timer.fire_at_ms <= now]
        return sorted(timers, key=lambda t: (t.fire_at_ms, t.run_id, t.timer_id))

    def has_due(self) -> bool:
        """Whether `due()` is not empty."""
        earliest = self.next_due_ms()
        return earliest is not None and earliest <= self.time.now_ms

    def next_due_ms(self) -> int | None:
        """The earliest fire time armed (None: no timer is armed)."""
        if not self._earliest_known:
            due: int | None = None
            for timer in self.armed.values():
                if due is None or timer.fire_at_ms < due:
                    due = timer.fire_at_ms
            self._earliest_ms, self._earliest_known = due, True
        return self._earliest_ms

    def arm(self, timer: ArmedTimer) -> None:
        """Arm `timer` (one armed under its run and id is replaced)."""
        self.armed[(timer.run_id, timer.timer_id)] = timer
        self._earliest_known = False

    def cancel(self, run_id: str, timer_id: str) -> None:
        if self.armed.pop((run_id, timer_id), None) is not None:
            self._earliest_known = False

    def fire(self, timer: ArmedTimer, delay_ms: int = 0) -> None:
        """Deliver the timer's command to its run (no msg id: fires are not deduplicated)."""
        self.cancel(timer.run_id, timer.timer_id)
        subject = command_subject(timer.run_id, COMMAND_PARTITIONS)
        self.commands.publish_now(subject, timer.payload, "", delay_ms)
        self.fired += 1


class TimerPort:
    """`protocols.Timers` for one process."""

    __slots__ = ("gate", "timers")

    def __init__(self, timers: MemoryTimers, gate: Gate = NO_FAULTS) -> None:
        self.timers = timers
        self.gate = gate

    async def arm(self, run_id: str, timer_id: str, fire_at_ms: int, payload: bytes) -> None:
        assert fire_at_ms >= 0
        _check_size("timer payload", payload)
        self.gate.check("arm_timer")
        now = self.timers.time.now_ms
        self.timers.arm(
            ArmedTimer(
                run_id=run_id,
                timer_id=timer_id,
                fire_at_ms=fire_at_ms,
                payload=payload,
                armed_at_ms=now,
            )
        )

    async def cancel(self, run_id: str, timer_id: str) -> None:
        self.gate.check("cancel_timer")
        self.timers.cancel(run_id, timer_id)


def message_of(queue: MemoryQueue, entry: QueueEntry, holder: object) -> QueueMessage:
    """A `QueueMessage` for a delivered entry (no faults), for contract tests."""
    return MemoryMessage(queue, entry, holder)
