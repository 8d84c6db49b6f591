"""Flow control of tasks: rate limits and task concurrency, each an aggregate of its own.

A workflow's `rate_limits` (per task type or per step, per value of a key path in the input)
and `max_task_concurrency` (per task type, across all runs) are *limiters*. Each limiter is an
aggregate on its own history subject (`limiter_id`, prefixed `admission-flow-`), decided the
way a gate is (`decide_flow(state, command) -> events`, `evolve_flow`), and appended by the
engine under the subject's expected last sequence, so two engines never dispatch over a limit.

- A rate limiter is a token bucket of `limit` units refilled over `period_ms`, kept as its
  theoretical arrival time (GCRA): every task that asks is given a time (`ready_at_ms`) at which
  its units are in the bucket, and the tokens are reserved for it at once. A task whose time is
  later than now waits on a durable timer until then (never a busy loop). In any window of `w`
  ms, the units of the tasks it lets go are at most `limit + ceil(w * limit / period_ms)`.
  Two workflows naming one rate limiter with different terms: the limiter keeps a bucket per
  workflow (`buckets`, each workflow's latest terms) and a task goes only once its units are in
  every bucket (its time is the latest of theirs, and every bucket is charged as of that
  time), so the tasks let go keep every workflow's bound at once: the strictest, whatever the
  periods. A newer version of a workflow replaces its own terms, never another's.
- A concurrency limiter holds at most `limit` running task attempts (`holders`); the others
  wait in arrival order and are granted when a holder's attempt ends. Two workflows naming
  one task type with different limits: the lowest applies (each workflow's latest limit is
  remembered, `asked`; a newer version of a workflow replaces its own, never another's).
- A request or release for an attempt the limiter already decided decides nothing.

Pure: no I/O, no clock (`at_ms` comes in the command).
"""

from __future__ import annotations

import hashlib
from typing import Final, Literal, assert_never

import msgspec

from kernel import limits

FLOW_PREFIX: Final = "admission-flow-"
US_PER_MS: Final = 1_000
replace = msgspec.structs.replace


class TaskRef(msgspec.Struct, frozen=True, kw_only=True):
    """One attempt of a task of a run (what a limiter counts)."""

    run_id: str
    step_id: str
    attempt: int

    @property
    def key(self) -> str:
        return f"{self.run_id}:{self.step_id}:{self.attempt}"


NO_TASK: Final = TaskRef(run_id="", step_id="", attempt=0)  # a snapshot's


def limiter_id_of(kind: Literal["rate", "concurrency"], scope: str, key: str) -> str:
    """A limiter's id: a safe subject token, the same for the same scope and key."""
    digest = hashlib.blake2b(f"{kind}\0{scope}\0{key}".encode(), digest_size=12).hexdigest()
    return FLOW_PREFIX + digest


def is_limiter_id(aggregate_id: str) -> bool:
    return aggregate_id.startswith(FLOW_PREFIX)


# -- commands -----------------------------------------------------------------------------


class FlowCommand(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    limiter_id: str
    task: TaskRef
    at_ms: int


class TakeTokens(FlowCommand, frozen=True, kw_only=True, tag="flow.take"):
    """Reserve `units` of a rate limiter's bucket for a task attempt."""

    name: str  # what it limits, for people ("task llm", "step call")
    limit: int
    period_ms: int
    units: int = 1
    workflow: str = ""  # whose terms these are (each workflow's bucket is kept)


class AcquireSlot(FlowCommand, frozen=True, kw_only=True, tag="flow.acquire"):
    """Ask a concurrency limiter for a slot for a task attempt, under `workflow`'s limit.
    `releasing`: attempts of the same run that ended, released first in the same decision
    (one append where a release and the next take were two)."""

    name: str
    limit: int
    workflow: str = ""
    releasing: tuple[TaskRef, ...] = ()


class ReleaseSlot(FlowCommand, frozen=True, kw_only=True, tag="flow.release"):
    """A task attempt ended (or will never run): its slot or its place is free."""


class SnapshotFlow(FlowCommand, frozen=True, kw_only=True, tag="flow.snapshot"):
    """Compaction: record the limiter's whole state, so the messages before it may be purged
    (`task` is `NO_TASK`; dagnats/runtime/admission_compact.py)."""


AnyFlowCommand = TakeTokens | AcquireSlot | ReleaseSlot | SnapshotFlow


# -- events -------------------------------------------------------------------------------


class FlowEvent(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    v: int = 1
    task: TaskRef
    at_ms: int


class LimiterOpened(FlowEvent, frozen=True, kw_only=True, tag="flow.opened"):
    """The limiter's first event, or its terms changed (a newer workflow)."""

    limiter_id: str
    name: str
    limit: int
    period_ms: int = 0
    workflow: str = ""  # whose limit this is (a concurrency limiter: the lowest applies)


class TokensTaken(FlowEvent, frozen=True, kw_only=True, tag="flow.taken"):
    units: int
    ready_at_ms: int
    tat_us: int  # the latest bucket's theoretical arrival time after this take
    tats: tuple[tuple[str, int], ...] = ()  # (workflow, its bucket's time after this take)


class SlotGranted(FlowEvent, frozen=True, kw_only=True, tag="flow.granted"):
    pass


class SlotQueued(FlowEvent, frozen=True, kw_only=True, tag="flow.queued"):
    pass


class SlotReleased(FlowEvent, frozen=True, kw_only=True, tag="flow.released"):
    pass


class FlowSnapshotted(FlowEvent, frozen=True, kw_only=True, tag="flow.snapshotted"):
    """The limiter's state as its events fold it: replay may start here."""

    state: FlowState


AnyFlowEvent = (
    LimiterOpened | TokensTaken | SlotGranted | SlotQueued | SlotReleased | FlowSnapshotted
)  # fmt: skip


class FlowDecision(msgspec.Struct, frozen=True, kw_only=True):
    """One history message of a limiter: the command and the events decided from it."""

    command: AnyFlowCommand
    events: tuple[AnyFlowEvent, ...]


# -- state --------------------------------------------------------------------------------


class Bucket(msgspec.Struct, frozen=True, kw_only=True):
    """One workflow's token bucket of a rate limiter: its latest terms and arrival time."""

    workflow: str
    limit: int
    period_ms: int
    tat_us: int = 0


class FlowState(msgspec.Struct, frozen=True, kw_only=True):
    limiter_id: str = ""
    name: str = ""
    limit: int = 0  # the lowest of `asked` (a rate limiter: the strictest rate's terms)
    period_ms: int = 0
    asked: tuple[tuple[str, int], ...] = ()  # (workflow, its latest limit), latest last
    tat_us: int = 0
    buckets: tuple[Bucket, ...] = ()  # a rate limiter's, one per workflow, latest last
    taken: tuple[tuple[str, int], ...] = ()  # (attempt key, ready_at_ms), the last kept
    holders: tuple[TaskRef, ...] = ()
    waiting: tuple[TaskRef, ...] = ()  # by arrival
    # Attempts released (ended, or never to run), the last kept: one asking again (a
    # redelivered command) decides nothing, so an ended attempt never takes a slot it would
    # never give back.
    released: tuple[str, ...] = ()


INITIAL_FLOW: Final = FlowState()

# -- decide -------------------------------------------------------------------------------


def decide_flow(state: FlowState, command: AnyFlowCommand) -> tuple[AnyFlowEvent, ...]:
    """The events a take, acquire or release leads to (none for one already decided)."""
    assert not state.limiter_id or state.limiter_id == command.limiter_id, (state, command)
    task, at_ms = command.task, command.at_ms
    events: list[AnyFlowEvent] = []
    match command:
        case TakeTokens():
            if ready_at(state, task) is not None:
                return ()
            _open(state, command, command.limit, command.period_ms, events)
            events.append(_take(fold_flow(state, events), command))
        case AcquireSlot():
            for ended in command.releasing:
                if ended != task and (ended in state.holders or ended in state.waiting):
                    events.append(SlotReleased(task=ended, at_ms=at_ms))
            state_now = fold_flow(state, events)
            if _is_known(state_now, task):
                return tuple(events + _fill(state_now, at_ms)) if events else ()
            _open(state, command, command.limit, 0, events)
            events.extend(_fill(fold_flow(state, events), at_ms))  # a limit raised: go on
            opened = fold_flow(state, events)  # its limit: the lowest any workflow asked
            if len(opened.holders) < opened.limit and not opened.waiting:
                events.append(SlotGranted(task=task, at_ms=at_ms))
            else:
                events.append(SlotQueued(task=task, at_ms=at_ms))
        case ReleaseSlot():
            if task not in state.holders and task not in state.waiting:
                return ()
            events.append(SlotReleased(task=task, at_ms=at_ms))
            events.extend(_fill(fold_flow(state, events), at_ms))
        case SnapshotFlow():
            if not state.limiter_id:
                return ()  # nothing to compact
            events.append(FlowSnapshotted(task=NO_TASK, at_ms=at_ms, state=state))
        case _:
            assert_never(command)
    return tuple(events)


def _is_known(state: FlowState, task: TaskRef) -> bool:
    return task in state.holders or task in state.waiting or task.key in state.released


def _open(
    state: FlowState,
    command: TakeTokens | AcquireSlot,
    limit: int,
    period_ms: int,
    events: list[AnyFlowEvent],
) -> None:
    limit, workflow = max(1, limit), command.workflow
    if isinstance(command, TakeTokens):
        period_ms = max(1, period_ms)
        terms = (workflow, limit, period_ms)
        if any((b.workflow, b.limit, b.period_ms) == terms for b in state.buckets):
            return
    elif state.limiter_id and (workflow, limit) in state.asked:
        return
    events.append(
        LimiterOpened(
            task=command.task, at_ms=command.at_ms, limiter_id=command.limiter_id,
            name=command.name, limit=limit, period_ms=period_ms, workflow=workflow,
        )
    )  # fmt: skip


def _take(state: FlowState, command: TakeTokens) -> TokensTaken:
    """GCRA over every workflow's bucket: each unit moves a bucket's theoretical arrival time
    on by period/limit; a take is ready once every bucket's time, less its whole period, is
    reached, and every bucket is charged as of that ready time (so a take delayed by one
    bucket never lets a burst through another)."""
    now_us = command.at_ms * US_PER_MS
    buckets = state.buckets or (
        Bucket(workflow=command.workflow, limit=max(1, command.limit),
               period_ms=max(1, command.period_ms), tat_us=state.tat_us),
    )  # fmt: skip
    ready_us = now_us
    for bucket in buckets:
        tat_us = max(bucket.tat_us, now_us) + _cost_us(bucket, command.units)
        ready_us = max(ready_us, tat_us - bucket.period_ms * US_PER_MS)
    tats = tuple(
        (b.workflow, max(b.tat_us, ready_us) + _cost_us(b, command.units)) for b in buckets
    )
    ready_ms = -(-ready_us // US_PER_MS)  # rounded up: never before its tokens are there
    return TokensTaken(
        task=command.task, at_ms=command.at_ms, units=max(1, min(command.units, command.limit)),
        ready_at_ms=ready_ms, tat_us=max(tat for _, tat in tats), tats=tats,
    )  # fmt: skip


def _cost_us(bucket: Bucket, units: int) -> int:
    units = max(1, min(units, bucket.limit))
    return units * bucket.period_ms * US_PER_MS // bucket.limit


def _fill(state: FlowState, at_ms: int) -> list[AnyFlowEvent]:
    free = max(0, state.limit - len(state.holders))
    return [SlotGranted(task=task, at_ms=at_ms) for task in state.waiting[:free]]


# -- evolve -------------------------------------------------------------------------------


def evolve_flow(state: FlowState, event: AnyFlowEvent) -> FlowState:
    """Apply one limiter event (total, trusting; the slot bound is asserted)."""
    match event:
        case LimiterOpened():
            if event.period_ms > 0:  # a rate limiter: one bucket per workflow
                return _open_bucket(state, event)
            others = tuple(each for each in state.asked if each[0] != event.workflow)
            asked = (*others, (event.workflow, event.limit))[-limits.flow_askers_kept :]
            return replace(
                state, limiter_id=event.limiter_id, name=event.name,
                limit=min(each[1] for each in asked), period_ms=event.period_ms, asked=asked,
            )  # fmt: skip
        case TokensTaken():
            taken = (*state.taken, (event.task.key, event.ready_at_ms))
            tats = dict(event.tats) or {b.workflow: event.tat_us for b in state.buckets}
            buckets = tuple(
                replace(b, tat_us=tats.get(b.workflow, b.tat_us)) for b in state.buckets
            )
            return replace(
                state, tat_us=event.tat_us, taken=taken[-limits.flow_taken_kept :], buckets=buckets
            )
        case SlotGranted():
            assert len(state.holders) < state.limit, f"{state.limiter_id}: a slot over the limit"
            waiting = tuple(task for task in state.waiting if task != event.task)
            return replace(state, holders=(*state.holders, event.task), waiting=waiting)
        case SlotQueued():
            assert len(state.waiting) < limits.flow_waiting_max, "the limiter's queue is full"
            return replace(state, waiting=(*state.waiting, event.task))
        case SlotReleased():
            holders = tuple(task for task in state.holders if task != event.task)
            waiting = tuple(task for task in state.waiting if task != event.task)
            released = (*state.released, event.task.key)[-limits.flow_taken_kept :]
            return replace(state, holders=holders, waiting=waiting, released=released)
        case FlowSnapshotted():
            assert not state.limiter_id or state.limiter_id == event.state.limiter_id, event
            return event.state
        case _:
            assert_never(event)


def _open_bucket(state: FlowState, event: LimiterOpened) -> FlowState:
    """A workflow's rate terms: its own bucket's terms replaced (its arrival time kept)."""
    own = [b for b in state.buckets if b.workflow == event.workflow]
    tat_us = own[0].tat_us if own else (0 if state.buckets else state.tat_us)
    bucket = Bucket(
        workflow=event.workflow, limit=event.limit, period_ms=event.period_ms, tat_us=tat_us
    )
    others = tuple(b for b in state.buckets if b.workflow != event.workflow)
    buckets = (*others, bucket)[-limits.flow_askers_kept :]
    strictest = min(buckets, key=lambda b: b.limit / b.period_ms)
    asked = tuple((b.workflow, b.limit) for b in buckets)
    return replace(
        state, limiter_id=event.limiter_id, name=event.name, limit=strictest.limit,
        period_ms=strictest.period_ms, asked=asked, buckets=buckets,
    )  # fmt: skip


def fold_flow(state: FlowState, events: list[AnyFlowEvent] | tuple[AnyFlowEvent, ...]) -> FlowState:
    for event in events:
        state = evolve_flow(state, event)
    return state


def check_limiter(state: FlowState) -> None:
    """A limiter's invariants: never a task waiting while a slot is free, none both holding
    and waiting (a grant over the limit is asserted in evolve)."""
    assert not state.waiting or len(state.holders) >= state.limit, "waiting with a free slot"
    assert not set(state.holders) & set(state.waiting), "held and waiting"


# -- what a task learns -------------------------------------------------------------------


def ready_at(state: FlowState, task: TaskRef) -> int | None:
    """When a rate limiter lets the attempt go (None: it never asked, or it is forgotten)."""
    key = task.key
    for taken_key, ready_ms in reversed(state.taken):
        if taken_key == key:
            return ready_ms
    return None


def granted_after(command: AnyFlowCommand, events: tuple[AnyFlowEvent, ...]) -> tuple[TaskRef, ...]:
    """The other attempts a decision granted a slot (released waiting ones go on)."""
    return tuple(
        event.task
        for event in events
        if isinstance(event, SlotGranted) and event.task != command.task
    )


# -- codec --------------------------------------------------------------------------------

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(FlowDecision)


def encode_flow(command: AnyFlowCommand, events: tuple[AnyFlowEvent, ...]) -> bytes:
    assert events, "a limiter decision appends at least one event"
    return _encoder.encode(FlowDecision(command=command, events=events))


def decode_flow(data: bytes) -> FlowDecision:
    """A limiter's history message (raises msgspec.DecodeError for bytes that are not one)."""
    return _decoder.decode(data)
