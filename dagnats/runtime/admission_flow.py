"""Flow control in the engine: ask a task's limiters before its message is published.

A workflow's `rate_limits` and `max_task_concurrency` are limiters (kernel/admission_flow.py),
each an aggregate on its own history subject (`dagnats.history.admission-flow-<hash>`),
decided by pure rules and appended under the subject's expected last sequence, so two engines
never let a task go over a limit. Before a task message of such a workflow is published
(`may_publish`), the engine asks each rate limiter that covers it for tokens, then its task
type's concurrency limiter for a slot. A task that must wait is deferred in its run
(`DeferTask`: `task.deferred`, a durable timer for a rate limit) and its message is not
published now; `task.released` publishes it later through the limiters again, which answer
what they decided (a take or a grant is recorded per attempt).

After each command of a run whose tasks hold slots (`after`), the attempts that ended
release their slots, and the attempts the limiter then grants are released in their runs.
When the command also enqueued a task of the same limiter (a chain's next step), that task's
acquire releases the run's ended attempts first, in the same append (`_ended_in`); `after`
then sees them released in its cached limiter state and appends nothing for them.
After a restart, `resume_limiter` releases the attempts that ended while no engine ran and
releases in their runs the attempts granted but still deferred. No step-type name appears here.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Protocol

from msgspec.structs import replace

from dagnats.runtime.admission_compact import Compactor
from dagnats.runtime.protocols import EventLog
from dagnats.runtime.settings import append_attempts_max, run_cache_max
from kernel.admission import value_at
from kernel.admission_flow import (
    INITIAL_FLOW,
    NO_TASK,
    AcquireSlot,
    AnyFlowCommand,
    AnyFlowEvent,
    FlowSnapshotted,
    FlowState,
    ReleaseSlot,
    SnapshotFlow,
    TakeTokens,
    TaskRef,
    decide_flow,
    decode_flow,
    encode_flow,
    fold_flow,
    granted_after,
    limiter_id_of,
    ready_at,
)
from kernel.admission_live import live_attempts, live_tasks
from kernel.admission_tasks import deferral_of
from kernel.commands import AnyCommand, DeferTask, ReleaseTask
from kernel.effects import EnqueueTask
from kernel.errors import AppendConflictError, DagnatsError
from kernel.state import RunState
from kernel.workflow.model import Admission

log = logging.getLogger("dagnats.admission")


class LimiterConflictError(DagnatsError):
    """A limiter's append conflicted `append_attempts_max` times in a row."""


class Loaded(Protocol):
    @property
    def state(self) -> RunState: ...


class EngineSide(Protocol):
    history: EventLog

    async def load(self, run_id: str) -> Loaded: ...

    def cached(self, run_id: str) -> Loaded | None: ...


Handle = Callable[[AnyCommand], Awaitable[object]]


class FlowRuntime:
    """Flow control of tasks around the engine (see the module's docstring)."""

    def __init__(
        self,
        engine: EngineSide,
        handle: Handle,
        now_ms: Callable[[], int],
        compactor: Compactor,
    ) -> None:
        self.engine = engine
        self.compactor = compactor  # (shared with the gates: one count per aggregate)
        self.handle = handle  # decides one command of a run (with admission around it)
        self.now_ms = now_ms
        self._limiters: OrderedDict[str, tuple[FlowState, int]] = OrderedDict()
        self._locks: dict[str, asyncio.Lock] = {}
        self.counters: dict[str, int] = {}

    # -- before a task is published -------------------------------------------------------

    def may_hold(self, effect: EnqueueTask) -> bool:
        """Whether `may_publish` may hold the task back: False, with no call, for a run the
        engine holds cached whose workflow limits no task (most runs)."""
        cached = self.engine.cached(effect.run_id)
        if cached is None:
            return True  # (may_publish loads the run and looks)
        workflow = cached.state.workflow
        admission = workflow.admission if workflow is not None else None
        return admission is not None and admission.limits_tasks

    async def may_publish(self, effect: EnqueueTask) -> bool:
        """Whether the task message may be published now; when not, its run records why."""
        run = (await self.engine.load(effect.run_id)).state
        admission = run.workflow.admission if run.workflow is not None else None
        if admission is None or not admission.limits_tasks:
            return True
        task = TaskRef(run_id=effect.run_id, step_id=effect.step_id, attempt=effect.attempt)
        now_ms = self.now_ms()
        for limiter_id, take in _rate_limiters(run, admission, effect, task, now_ms):
            state, _ = await self.decide(take)
            ready_ms = ready_at(state, task)
            assert ready_ms is not None, f"{limiter_id}: no take recorded for {task.key}"
            if ready_ms > now_ms:
                self._count("rate_limited")
                await self._defer(task, "rate_limited", limiter_id, ready_ms, now_ms)
                return False
        acquire = _slot_request(run, admission, effect, task, now_ms)
        if acquire is None:  # (every task of a limited type takes a slot: items, tools too)
            return True
        ended = self._ended_in(acquire.limiter_id, run)
        if ended:  # their releases and this slot in one append (`after` then has none)
            acquire = replace(acquire, releasing=ended)
            self._count("releases_batched")
        state, events = await self.decide(acquire)
        for granted in granted_after(acquire, events):  # waiting ones a raised limit lets go
            await self._release_in_run(granted, now_ms)
        if task in state.holders:
            return True
        self._count("waiting_for_slot")
        await self._defer(task, "task_concurrency", acquire.limiter_id, None, now_ms)
        return False

    async def _defer(
        self, task: TaskRef, reason: str, limiter_id: str, until_ms: int | None, now_ms: int
    ) -> None:
        defer = DeferTask(
            run_id=task.run_id, at_ms=now_ms, step_id=task.step_id, attempt=task.attempt,
            reason=reason, limiter_id=limiter_id, until_ms=until_ms,  # type: ignore[arg-type]
        )  # fmt: skip
        await self.handle(defer)

    # -- after a command of a run ---------------------------------------------------------

    async def after(self, before: RunState, after: RunState, at_ms: int) -> None:
        """Release the slots of the attempts that ended; release in their runs the attempts
        the limiters then grant."""
        workflow = after.workflow
        if workflow is None or workflow.admission is None:
            return
        limited = frozenset(each.task for each in workflow.admission.max_task_concurrency)
        if not limited:
            return
        ended = live_tasks(before, limited) - live_tasks(after, limited)
        for each in sorted(ended):
            limiter_id = limiter_id_of("concurrency", each.task, "")
            task = TaskRef(run_id=after.run_id, step_id=each.step_id, attempt=each.attempt)
            if not self._released(limiter_id, task):
                await self.release(limiter_id, task, at_ms)

    def _ended_in(self, limiter_id: str, run: RunState) -> tuple[TaskRef, ...]:
        """The run's attempts the limiter holds (as this engine last saw it) that ended: the
        next task's acquire releases them in its own append. No I/O: a limiter not in the
        cache gives none, and `after` releases them on their own."""
        cached = self._limiters.get(limiter_id)
        if cached is None:
            return ()
        state = cached[0]
        mine = [each for each in (*state.holders, *state.waiting) if each.run_id == run.run_id]
        if not mine:
            return ()
        live = live_attempts(run)  # (one `resume` of the run, not one per attempt)
        return tuple(each for each in mine if (each.step_id, each.attempt) not in live)

    def _released(self, limiter_id: str, task: TaskRef) -> bool:
        """Whether this engine saw the attempt released already (by a batched acquire): a
        limiter's history only grows, so a release seen once stays true."""
        cached = self._limiters.get(limiter_id)
        if cached is None:
            return False
        state = cached[0]
        gone = task not in state.holders and task not in state.waiting
        return gone and task.key in state.released

    async def release(self, limiter_id: str, task: TaskRef, at_ms: int) -> None:
        release = ReleaseSlot(limiter_id=limiter_id, task=task, at_ms=at_ms)
        _, events = await self.decide(release)
        for granted in granted_after(release, events):
            await self._release_in_run(granted, at_ms)

    async def _release_in_run(self, task: TaskRef, at_ms: int) -> None:
        command = ReleaseTask(
            run_id=task.run_id, at_ms=at_ms, step_id=task.step_id, attempt=task.attempt
        )
        await self.handle(command)

    # -- restart --------------------------------------------------------------------------

    async def resume_limiter(self, limiter_id: str, at_ms: int) -> None:
        """Release attempts that ended; release in its run each granted one still deferred."""
        self._limiters.pop(limiter_id, None)
        state, _ = await self._load(limiter_id)
        for task in (*state.holders, *state.waiting):
            run = (await self.engine.load(task.run_id)).state
            if (task.step_id, task.attempt) not in live_attempts(run):
                await self.release(limiter_id, task, at_ms)
            elif task in state.holders and deferral_of(run, task.step_id, task.attempt):
                await self._release_in_run(task, at_ms)

    # -- the limiter aggregate ------------------------------------------------------------

    async def decide(self, command: AnyFlowCommand) -> tuple[FlowState, tuple[AnyFlowEvent, ...]]:
        """Decide a limiter command and append its events under the expected last sequence;
        snapshot the limiter and purge below when its history since the last snapshot is long
        (runtime/admission_compact.py).

        Raises:
            LimiterConflictError: the append conflicted append_attempts_max times in a row.
        """
        state, events, _ = await self._decide(command)
        if events and not isinstance(command, SnapshotFlow):
            limiter_id = command.limiter_id
            await self.compactor.after_append(
                limiter_id, lambda: self._snapshot_limiter(limiter_id), self._count
            )
        return state, events

    async def _snapshot_limiter(self, limiter_id: str) -> int | None:
        """Append the limiter's snapshot; its sequence (None: nothing appended)."""
        snapshot = SnapshotFlow(limiter_id=limiter_id, task=NO_TASK, at_ms=self.now_ms())
        _, events, seq = await self._decide(snapshot)
        return seq if events else None

    async def _decide(
        self, command: AnyFlowCommand
    ) -> tuple[FlowState, tuple[AnyFlowEvent, ...], int]:
        """Decide and append under the limiter's lock: the state, the events, the last seq."""
        limiter_id = command.limiter_id
        lock = self._locks.setdefault(limiter_id, asyncio.Lock())
        async with lock:
            for _ in range(append_attempts_max):
                state, last_seq = await self._load(limiter_id)
                events = decide_flow(state, command)
                if not events:
                    if await self.engine.history.last_seq(limiter_id) == last_seq:
                        return state, (), last_seq
                    self._limiters.pop(limiter_id, None)  # another engine appended
                    continue
                payload = encode_flow(command, events)
                digest = hashlib.blake2b(payload, digest_size=8).hexdigest()
                try:
                    seq = await self.engine.history.append(
                        limiter_id, payload, msg_id=f"{limiter_id}:{last_seq}:{digest}",
                        expected_last_seq=last_seq,
                    )  # fmt: skip
                except AppendConflictError:
                    self._count("limiter_conflicts")
                    self._limiters.pop(limiter_id, None)
                    continue
                new_state = fold_flow(state, events)
                self._remember(limiter_id, new_state, seq)
                return new_state, events, seq
        raise LimiterConflictError(f"limiter {limiter_id}: {append_attempts_max} conflicts")

    async def limiter_state(self, limiter_id: str) -> FlowState:
        self._limiters.pop(limiter_id, None)
        return (await self._load(limiter_id))[0]

    async def _load(self, limiter_id: str) -> tuple[FlowState, int]:
        cached = self._limiters.get(limiter_id)
        if cached is not None:
            return cached
        state, last_seq, since = INITIAL_FLOW, 0, 0
        async for seq, data in self.engine.history.read(limiter_id):
            events = decode_flow(data).events
            state = fold_flow(state, events)
            last_seq = seq
            since = 0 if isinstance(events[-1], FlowSnapshotted) else since + 1
        self._remember(limiter_id, state, last_seq)
        self.compactor.loaded(limiter_id, since)
        return state, last_seq

    def _remember(self, limiter_id: str, state: FlowState, seq: int) -> None:
        self._limiters[limiter_id] = (state, seq)
        self._limiters.move_to_end(limiter_id)
        while len(self._limiters) > run_cache_max:
            self._limiters.popitem(last=False)
        if len(self._locks) > run_cache_max:  # drop the idle locks
            for key in [k for k, lock in self._locks.items() if not lock.locked()]:
                del self._locks[key]

    def _count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1


def _rate_limiters(
    run: RunState, admission: Admission, effect: EnqueueTask, task: TaskRef, now_ms: int
) -> list[tuple[str, TakeTokens]]:
    """The rate limiters that cover a task (by its type, by its step), with their takes."""
    assert run.workflow is not None
    found: list[tuple[str, TakeTokens]] = []
    for rate in admission.rate_limits:
        if rate.task:
            if rate.task != effect.task:
                continue
            scope = f"task {rate.task}"
        elif rate.step == effect.step_id:
            scope = f"step {run.workflow.name}.{rate.step}"
        else:
            continue
        key = value_at(bytes(run.input), rate.key) if rate.key else ""
        limiter_id = limiter_id_of("rate", scope, key)
        take = TakeTokens(
            limiter_id=limiter_id, task=task, at_ms=now_ms, name=scope, limit=rate.limit,
            period_ms=rate.period_ms, units=rate.units, workflow=run.workflow.name,
        )  # fmt: skip
        found.append((limiter_id, take))
    return found


def _slot_request(
    run: RunState, admission: Admission, effect: EnqueueTask, task: TaskRef, now_ms: int
) -> AcquireSlot | None:
    assert run.workflow is not None
    for each in admission.max_task_concurrency:
        if each.task == effect.task:
            limiter_id = limiter_id_of("concurrency", each.task, "")
            return AcquireSlot(
                limiter_id=limiter_id, task=task, at_ms=now_ms, name=f"task {each.task}",
                limit=each.limit, workflow=run.workflow.name,
            )  # fmt: skip
    return None
