"""Admission in the engine: ask a run's gate before it starts, tell it when the run ends.

The gate is an aggregate on its own history subject (`dagnats.history.admission-<hash>`),
decided by the pure `kernel.admission` rules and appended under the subject's expected last
sequence, like a run: two engines never admit over a limit (the loser of a race reloads and
decides again). Around each command the engine decides (`AdmissionRuntime.handle`):

- before: a `StartRun` of a gated workflow (or one with an `input_schema`) becomes a
  `StartGated` carrying the gate's verdict (admitted, pending, skipped) or the schema errors;
  a scheduled run's timer (`AdmitRun` with no verdict) asks the gate the same way;
- after: a run of a gate that has just ended releases its slot (or its place in the queue),
  except a run that continued as new into the same workflow, whose successor has not started:
  it keeps the slot for that successor (the hand-over, below);
  the runs the gate then grants are admitted, and the holders a `cancel_previous` singleton
  evicts are cancelled, each by deciding a command for that run here and now, or, under
  partitioned engines, by sending it to the run's partition when another engine owns it
  (`forward`), so that every append of a run comes from its partition's owner.

Continue-as-new hands the slot on: the successor's request carries `takes_over_from` (its
predecessor), and when both land on the same gate (same workflow, same key value) the slot
moves to it with no release and no queue step, so no pending run slips in between the links.
When the successor's gate differs (another key value, another workflow, or no gate), the
successor's start releases the predecessor's slot instead: nothing leaks.

A crash between the gate's append and the run's is safe: the start is redelivered and the gate,
asked again, answers what it decided. After a restart `resume_gate` admits every holder still
pending and releases every holder or waiting run that has ended, so no run is left pending
while a slot is free. No step-type name appears here.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Final, Literal, Protocol

import msgspec

from dagnats.input_schema import input_errors
from dagnats.runtime.admission_compact import Compactor
from dagnats.runtime.admission_flow import FlowRuntime
from dagnats.runtime.parked import RunParkedError
from dagnats.runtime.protocols import EventLog
from dagnats.runtime.settings import append_attempts_max, run_cache_max
from kernel import codec
from kernel.admission import (
    INITIAL_ADMISSION,
    AdmissionHandedOver,
    AdmissionSnapshotted,
    AdmissionState,
    AnyAdmissionCommand,
    AnyAdmissionEvent,
    FollowUps,
    Gate,
    ReleaseAdmission,
    SnapshotAdmission,
    decide_admission,
    decode_admission,
    encode_admission,
    fold_admission,
    follow_ups,
    gate_of,
    request_for,
    verdict,
)
from kernel.admission_flow import is_limiter_id
from kernel.commands import (
    AdmissionVerdict,
    AdmitRun,
    AnyCommand,
    CancelRun,
    FireTimer,
    ScheduleRun,
    StartGated,
    StartRun,
)
from kernel.errors import AppendConflictError, DagnatsError
from kernel.state import RunState, is_terminal

log = logging.getLogger("dagnats.admission")

follow_depth_max: Final = 32  # nested follow-ups (a granted run that ends at once, ...)
_depth: contextvars.ContextVar[int] = contextvars.ContextVar("admission_depth", default=0)


class GateConflictError(DagnatsError):
    """A gate's append conflicted `append_attempts_max` times in a row."""


class Loaded(Protocol):
    @property
    def state(self) -> RunState: ...

    @property
    def last_seq(self) -> int: ...


class EngineSide(Protocol):
    """What admission needs of the engine (runtime/engine.py)."""

    history: EventLog

    async def load(self, run_id: str) -> Loaded: ...

    def cached(self, run_id: str) -> Loaded | None: ...

    def forget(self, run_id: str) -> None: ...


_NO_FOLLOW_UPS: Final = FollowUps()  # (frozen: shared)
_LOOKED_AT_BEFORE: Final = (StartRun, ScheduleRun, FireTimer)  # (`handle`: the rest go as is)

Outcome = Literal["applied", "ignored", "rejected", "dead", "parked", "retry"]


class Decided(msgspec.Struct, frozen=True):
    """What the engine did with one command of a run: the outcome and, when it appended,
    the run's state the decision was made on (history's, by the expected-sequence check,
    never a stale cached copy) and the state after it."""

    outcome: Outcome
    before: RunState | None = None
    after: RunState | None = None


Decide = Callable[[AnyCommand, bytes, int], Awaitable[Decided]]


class AdmissionRuntime:
    """Admission around the engine's decisions (see the module's docstring)."""

    def __init__(self, engine: EngineSide, decide_run: Decide) -> None:
        self.engine = engine
        self.decide_run = decide_run  # the engine's own path for one command of a run
        self._gates: OrderedDict[str, tuple[AdmissionState, int]] = OrderedDict()
        self._locks: OrderedDict[str, asyncio.Lock] = OrderedDict()
        self.counters: dict[str, int] = {}
        # The time stamped on what a restart decides (the simulator sets its virtual clock).
        self.now_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000
        # Flow control of tasks (runtime/admission_flow.py), on the same path for commands.
        # Snapshots and purges of gates' and limiters' histories (runtime/admission_compact.py).
        self.compactor = Compactor()
        self.flow = FlowRuntime(engine, self._decide_one, self._now, self.compactor)
        # Partitioned engines (runtime/partitions.py): a follow-up for a run of a partition
        # this engine does not own is sent to that partition as a command (True), so every
        # append of a run comes from its partition's owner; None or False: decided here.
        self.forward: Callable[[AnyCommand], Awaitable[bool]] | None = None

    def _now(self) -> int:
        return self.now_ms()

    async def _decide_one(self, command: AnyCommand) -> Outcome:
        """A follow-up for another run: sent to its partition's owner, or decided here."""
        if self.forward is not None and await self.forward(command):
            self._count("forwarded")
            return "ignored"  # (the owner decides it when the command arrives)
        return await self.handle(command, codec.encode(command), 1)

    # -- around one command ---------------------------------------------------------------

    async def handle(self, command: AnyCommand, data: bytes, deliveries: int) -> Outcome:
        """Decide `command` with admission before and after it (see the module). Only a
        start or a timer is looked at before (`_before`: any other command goes as it is)."""
        follow = _NO_FOLLOW_UPS
        if isinstance(command, _LOOKED_AT_BEFORE):
            try:
                before = await self._before(command)
            except RunParkedError:
                before = None  # the engine parks the run when it decides the command
            if before is None:
                return (await self.decide_run(command, data, deliveries)).outcome
            command, follow = before if isinstance(before, tuple) else (before, _NO_FOLLOW_UPS)
        decided = await self.decide_run(command, data, deliveries)
        if decided.outcome == "applied" or follow.admit or follow.cancel:
            await self.after(command, decided, follow)
        return decided.outcome

    @staticmethod
    def looks_before(command: AnyCommand) -> bool:
        """Whether `handle` looks at `command` before it is decided (a start or a timer).
        For any other command, deciding it with the engine's own path and then calling
        `after` when `after_needed` says so is what `handle` does, without its await."""
        return isinstance(command, _LOOKED_AT_BEFORE)

    @staticmethod
    def after_needed(decided: Decided) -> bool:
        """Whether admission has anything to do after a command (of no follow-ups) was
        decided: it appended, in a run whose workflow has admission rules (a gate's
        release and flow control's slots are of such runs only: `_release`, `flow.after`)."""
        after = decided.after
        if decided.outcome != "applied" or after is None or after.workflow is None:
            return False
        return after.workflow.admission is not None

    async def after(
        self, command: AnyCommand, decided: Decided, follow: FollowUps = _NO_FOLLOW_UPS
    ) -> None:
        """After the engine decided `command`: the slots its attempts held, the gate's
        release when its run ended, and the follow-ups (the gate's, `follow`, too)."""
        if decided.outcome != "applied":
            if follow.admit or follow.cancel:
                await self._follow(follow, command.at_ms)
            return
        # The states the append went from and to, never a cached copy that another engine's
        # append made stale (which missed an ended attempt's release: `dagnats sim` found it).
        state_before, state_after = decided.before, decided.after
        assert state_before is not None and state_after is not None, command
        if state_after.workflow is not None and state_after.workflow.admission is not None:
            await self.flow.after(state_before, state_after, command.at_ms)  # (else: no limits)
        if is_terminal(state_after) and not is_terminal(state_before):
            follow = _merge(follow, await self._release(state_after, command.at_ms))
        if follow.admit or follow.cancel:
            await self._follow(follow, command.at_ms)

    async def _before(
        self, command: AnyCommand
    ) -> AnyCommand | tuple[AnyCommand, FollowUps] | None:
        """The command as it should be decided, with the gate's follow-ups; None when
        admission has nothing to do with it (the common case: no extra round trip)."""
        if isinstance(command, StartRun | ScheduleRun):
            start = command if isinstance(command, StartRun) else command.start
            workflow = start.workflow
            admission = workflow.admission
            if start.continued_from and isinstance(command, StartRun):
                return await self._continued(command)
            if admission is None:
                return None
            if (await self._run_now(command.run_id)).status != "new":
                return command  # the same start again: the run decides it to nothing
            errors = input_errors(workflow, bytes(start.input))
            if errors:
                reason = "input does not meet the workflow's input_schema: " + "; ".join(errors)
                invalid = AdmissionVerdict(outcome="invalid", reason=reason)
                return StartGated(
                    run_id=command.run_id, at_ms=command.at_ms, start=start, verdict=invalid
                )
            if isinstance(command, ScheduleRun) or not admission.gated:
                return command
            return await self._ask(command.run_id, command.at_ms, start, start)
        if isinstance(command, FireTimer) and command.kind == "run_at":  # a scheduled start
            state = await self._run_now(command.run_id)
            if state.status != "scheduled":
                return command
            admit = AdmitRun(run_id=command.run_id, at_ms=command.at_ms)
            return await self._ask(command.run_id, command.at_ms, state, admit)
        return command

    async def _run_now(self, run_id: str) -> RunState:
        """The run's state as its history holds it now, for a look before its start: a state
        the engine holds of a run that has since been deleted (whose id may be starting a new
        run, README "Retention") would let that start pass its gate unasked, so a cached run
        that is not new is checked against its history's last sequence (one read, for a
        start of a gated workflow whose run exists: a duplicate, or an id used again)."""
        loaded = await self.engine.load(run_id)
        if loaded.state.status == "new":
            return loaded.state  # (its start is asked at the gate: nothing passes unasked)
        if await self.engine.history.last_seq(run_id) == loaded.last_seq:
            return loaded.state
        self.engine.forget(run_id)  # (another life of the id, or another engine appended)
        return (await self.engine.load(run_id)).state

    async def _continued(self, command: StartRun) -> AnyCommand | tuple[AnyCommand, FollowUps]:
        """The start of a continue-as-new successor: it takes over its predecessor's slot
        when both runs land on the same gate; else the predecessor's slot is released."""
        previous = command.continued_from or ""
        state = await self._run_now(command.run_id)
        predecessor = (await self.engine.load(previous)).state
        held = _gate_of_run(predecessor)
        admission = command.workflow.admission
        gate = gate_of(command.workflow, bytes(command.input))
        if state.status != "new" or (held is None and admission is None):
            return command  # (the same start again, or nothing gated on either side)
        follow = FollowUps()
        if held is not None and (gate is None or gate.gate_id != held.gate_id):
            release = ReleaseAdmission(gate_id=held.gate_id, run_id=previous, at_ms=command.at_ms)
            _, events = await self.decide_gate(release)
            follow = follow_ups(release, events)
            self._count("chain_released")
            previous = ""
        errors = input_errors(command.workflow, bytes(command.input))
        if errors:
            reason = "input does not meet the workflow's input_schema: " + "; ".join(errors)
            invalid = AdmissionVerdict(outcome="invalid", reason=reason)
            gated = StartGated(
                run_id=command.run_id, at_ms=command.at_ms, start=command, verdict=invalid
            )
            return gated, follow
        if gate is None:
            return command, follow
        asked = await self._ask(command.run_id, command.at_ms, command, command, previous)
        if not isinstance(asked, tuple):
            return asked, follow
        return asked[0], _merge(follow, asked[1])

    async def _ask(
        self,
        run_id: str,
        at_ms: int,
        start: StartRun | RunState,
        command: StartRun | AdmitRun,
        takes_over_from: str = "",
    ) -> tuple[AnyCommand, FollowUps] | AnyCommand:
        assert start.workflow is not None
        gate = gate_of(start.workflow, bytes(start.input))
        if gate is None:
            return command
        request = request_for(gate, run_id, at_ms, takes_over_from)
        state, events = await self.decide_gate(request)
        if any(isinstance(e, AdmissionHandedOver) for e in events):
            self._count("handed_over")
        found = verdict(state, run_id)
        follow = follow_ups(request, events)
        self._count(f"verdict_{found.outcome}")
        if isinstance(command, StartRun):
            gated = StartGated(run_id=run_id, at_ms=at_ms, start=command, verdict=found)
            return gated, follow
        return msgspec.structs.replace(command, verdict=found), follow

    async def _release(self, state: RunState, at_ms: int) -> FollowUps:
        """A run of a gate ended: free its slot or its place in the queue (a run that
        continued as new into its own workflow keeps it for its successor, see `_keeps`)."""
        gate = _gate_of_run(state)
        if gate is None or await self._keeps(state):
            return FollowUps()
        release = ReleaseAdmission(gate_id=gate.gate_id, run_id=state.run_id, at_ms=at_ms)
        _, events = await self.decide_gate(release)
        return follow_ups(release, events)

    async def _follow(self, follow: FollowUps, at_ms: int) -> None:
        """Admit the granted runs and cancel the evicted holders, each here and now."""
        if not follow.admit and not follow.cancel:
            return
        depth = _depth.get()
        if depth >= follow_depth_max:
            log.warning("admission: follow-ups %d deep; left to the gate's resume", depth)
            return
        token = _depth.set(depth + 1)
        try:
            for run_id in follow.admit:
                admitted = AdmissionVerdict(outcome="admitted")
                await self._decide_one(AdmitRun(run_id=run_id, at_ms=at_ms, verdict=admitted))
            for run_id, reason in follow.cancel:
                await self._decide_one(CancelRun(run_id=run_id, at_ms=at_ms, reason=reason))
        finally:
            _depth.reset(token)

    async def _keeps(self, state: RunState) -> bool:
        """Whether an ended run keeps its slot for its continue-as-new successor: it
        continued into the same workflow and the successor has not started yet (its start,
        sent again after a restart, takes the slot over or releases it)."""
        if state.status != "continued_as_new" or state.continued_as is None:
            return False
        assert state.workflow is not None
        if state.continued_workflow not in ("", state.workflow.name):
            return False  # another workflow: another gate
        return await self.engine.history.last_seq(state.continued_as) == 0

    # -- the gate aggregate ---------------------------------------------------------------

    async def decide_gate(
        self, command: AnyAdmissionCommand
    ) -> tuple[AdmissionState, tuple[AnyAdmissionEvent, ...]]:
        """Decide a gate command and append its events under the expected last sequence;
        snapshot the gate and purge below when its history since the last snapshot is long
        (runtime/admission_compact.py).

        Raises:
            GateConflictError: the append conflicted append_attempts_max times in a row.
        """
        state, events, _ = await self._decide_gate(command)
        if events and not isinstance(command, SnapshotAdmission):
            gate_id = command.gate_id
            await self.compactor.after_append(
                gate_id, lambda: self._snapshot_gate(gate_id), self._count
            )
        return state, events

    async def _snapshot_gate(self, gate_id: str) -> int | None:
        """Append the gate's snapshot; its sequence (None: nothing appended)."""
        snapshot = SnapshotAdmission(gate_id=gate_id, run_id="", at_ms=self.now_ms())
        _, events, seq = await self._decide_gate(snapshot)
        return seq if events else None

    async def _decide_gate(
        self, command: AnyAdmissionCommand
    ) -> tuple[AdmissionState, tuple[AnyAdmissionEvent, ...], int]:
        """Decide and append under the gate's lock: the state, the events, the last seq."""
        gate_id = command.gate_id
        async with self._lock(gate_id):
            for _ in range(append_attempts_max):
                state, last_seq = await self._load_gate(gate_id)
                events = decide_admission(state, command)
                if not events:
                    if await self.engine.history.last_seq(gate_id) == last_seq:
                        return state, (), last_seq
                    self._gates.pop(gate_id, None)  # another engine appended: read again
                    continue
                payload = encode_admission(command, events)
                digest = hashlib.blake2b(payload, digest_size=8).hexdigest()
                try:
                    seq = await self.engine.history.append(
                        gate_id, payload, msg_id=f"{gate_id}:{last_seq}:{digest}",
                        expected_last_seq=last_seq,
                    )  # fmt: skip
                except AppendConflictError:
                    self._count("gate_conflicts")
                    self._gates.pop(gate_id, None)
                    continue
                new_state = fold_admission(state, events)
                self._remember(gate_id, new_state, seq)
                return new_state, events, seq
        raise GateConflictError(f"gate {gate_id}: {append_attempts_max} append conflicts")

    async def gate_state(self, gate_id: str) -> AdmissionState:
        """A gate's state, folded from its history (or the cache)."""
        return (await self._load_gate(gate_id))[0]

    async def _load_gate(self, gate_id: str) -> tuple[AdmissionState, int]:
        cached = self._gates.get(gate_id)
        if cached is not None:
            return cached
        state, last_seq, since = INITIAL_ADMISSION, 0, 0
        async for seq, data in self.engine.history.read(gate_id):
            events = decode_admission(data).events
            state = fold_admission(state, events)
            last_seq = seq
            since = 0 if isinstance(events[-1], AdmissionSnapshotted) else since + 1
        self._remember(gate_id, state, last_seq)
        self.compactor.loaded(gate_id, since)
        return state, last_seq

    def _remember(self, gate_id: str, state: AdmissionState, seq: int) -> None:
        self._gates[gate_id] = (state, seq)
        self._gates.move_to_end(gate_id)
        while len(self._gates) > run_cache_max:
            self._gates.popitem(last=False)

    def _lock(self, gate_id: str) -> asyncio.Lock:
        lock = self._locks.get(gate_id)
        if lock is None:
            lock = self._locks[gate_id] = asyncio.Lock()
            while len(self._locks) > run_cache_max:
                oldest, held = next(iter(self._locks.items()))
                if held.locked():
                    break
                del self._locks[oldest]
        return lock

    def forget_gate(self, gate_id: str) -> None:
        self._gates.pop(gate_id, None)

    # -- restart --------------------------------------------------------------------------

    async def resume_gate(self, gate_id: str, at_ms: int) -> None:
        """After a restart: admit each holder still pending, release each run that ended."""
        if is_limiter_id(gate_id):  # a task limiter (runtime/admission_flow.py)
            await self.flow.resume_limiter(gate_id, at_ms)
            return
        self.forget_gate(gate_id)
        state = await self.gate_state(gate_id)
        for run_id in (*state.holders, *(w.run_id for w in state.waiting)):
            run = (await self.engine.load(run_id)).state
            if is_terminal(run) and not await self._keeps(run):
                release = ReleaseAdmission(gate_id=gate_id, run_id=run_id, at_ms=at_ms)
                _, events = await self.decide_gate(release)
                await self._follow(follow_ups(release, events), at_ms)
            elif run.status == "pending" and run_id in state.holders:
                await self._follow(FollowUps(admit=(run_id,)), at_ms)

    async def release_ended(self, state: RunState, at_ms: int) -> None:
        """A run found ended at a restart: its slot is released (nothing if it was)."""
        await self._follow(await self._release(state, at_ms), at_ms)

    def all_counters(self) -> dict[str, int]:
        """The counters of the gates, of flow control and of compaction, each name prefixed by
        its part (`admission.`, `flow.`, `compaction.`), for the engine's status record."""
        parts = {"admission": self.counters, "flow": self.flow.counters}
        parts["compaction"] = self.compactor.counters
        return {f"{part}.{name}": n for part, counts in parts.items() for name, n in counts.items()}

    def _count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1


def _gate_of_run(state: RunState) -> Gate | None:
    if state.workflow is None:
        return None
    return gate_of(state.workflow, bytes(state.input))


def _merge(first: FollowUps, second: FollowUps) -> FollowUps:
    return FollowUps(admit=first.admit + second.admit, cancel=first.cancel + second.cancel)
