"""Compaction of admission aggregates (runtime/admission_compact.py): a gate's or a task
limiter's history is snapshotted and purged below the snapshot once it passes a bound.

Pure: hypothesis properties `fold(all) == fold(snapshot + rest)` for gates and limiters.
Real NATS (a nats-server of the test's own, the real history stream and JetStream purge): a
gate compacts to a short subject with the same state; a crash between the snapshot and the
purge (the purge fails) loses nothing and the next compaction purges below its own snapshot;
a fresh engine's cache reads the same state from the compacted subject."""

from __future__ import annotations

import asyncio
from typing import Any

from hypothesis import given as for_all
from hypothesis import settings
from hypothesis import strategies as st
from nats.js.client import JetStreamContext

from dagnats.runtime.admission import AdmissionRuntime
from dagnats.runtime.admission_compact import Compactor, history_purger
from dagnats.runtime.log import JetStreamEventLog
from dagnats.runtime.protocols import EventLog
from dagnats.runtime.resources import HISTORY_STREAM, history_subject
from kernel.admission import (
    INITIAL_ADMISSION,
    AnyAdmissionCommand,
    AnyAdmissionEvent,
    ReleaseAdmission,
    RequestAdmission,
    SnapshotAdmission,
    decide_admission,
    decode_admission,
    encode_admission,
    fold_admission,
    gate_id_of,
)
from kernel.admission_flow import (
    INITIAL_FLOW,
    NO_TASK,
    AcquireSlot,
    AnyFlowCommand,
    AnyFlowEvent,
    FlowSnapshotted,
    ReleaseSlot,
    SnapshotFlow,
    TakeTokens,
    TaskRef,
    decide_flow,
    decode_flow,
    encode_flow,
    fold_flow,
)

GATE = gate_id_of("compacted", "")
LIMITER = "admission-flow-compacted"

gate_steps = st.lists(
    st.tuples(st.sampled_from(["request", "release"]), st.integers(0, 6), st.integers(-2, 2)),
    max_size=40,
)


def gate_command(kind: str, run: int, priority: int, at_ms: int) -> AnyAdmissionCommand:
    if kind == "request":
        return RequestAdmission(
            gate_id=GATE, run_id=f"r{run}", at_ms=at_ms, limit=2, priority=priority,
            workflow="compacted",
        )  # fmt: skip
    return ReleaseAdmission(gate_id=GATE, run_id=f"r{run}", at_ms=at_ms)


@settings(max_examples=200, deadline=None)
@for_all(gate_steps, st.integers(0, 40))
def test_a_gate_folded_from_its_snapshot_is_the_gate_folded_from_the_start(
    steps: list[tuple[str, int, int]], cut: int
) -> None:
    decisions: list[tuple[AnyAdmissionEvent, ...]] = []
    state = INITIAL_ADMISSION
    for at_ms, (kind, run, priority) in enumerate(steps):
        if at_ms == cut:
            snap = SnapshotAdmission(gate_id=GATE, run_id="", at_ms=at_ms)
            decisions.append(decide_admission(state, snap))
            state = fold_admission(state, decisions[-1])
        events = decide_admission(state, gate_command(kind, run, priority, at_ms))
        decisions.append(events)
        state = fold_admission(state, events)
    last = SnapshotAdmission(gate_id=GATE, run_id="", at_ms=99)
    snapshot = decide_admission(state, last)
    everything = [e for events in decisions for e in events]
    assert fold_admission(INITIAL_ADMISSION, everything) == state
    if state.gate_id:  # replay from the snapshot alone, and from a snapshot mid-way
        stored = decode_admission(encode_admission(last, snapshot))
        assert fold_admission(INITIAL_ADMISSION, stored.events) == state
    for index, events in enumerate(decisions):
        if events and type(events[0]).__name__ == "AdmissionSnapshotted":
            rest = [e for later in decisions[index:] for e in later]
            assert fold_admission(INITIAL_ADMISSION, rest) == state


flow_steps = st.lists(
    st.tuples(st.sampled_from(["take", "acquire", "release"]), st.integers(0, 6)), max_size=40
)


def flow_command(kind: str, run: int, at_ms: int) -> AnyFlowCommand:
    task = TaskRef(run_id=f"r{run}", step_id="s", attempt=1)
    if kind == "take":
        return TakeTokens(
            limiter_id=LIMITER, task=task, at_ms=at_ms, name="t", limit=3, period_ms=1_000
        )
    if kind == "acquire":
        return AcquireSlot(limiter_id=LIMITER, task=task, at_ms=at_ms, name="t", limit=2)
    return ReleaseSlot(limiter_id=LIMITER, task=task, at_ms=at_ms)


@settings(max_examples=200, deadline=None)
@for_all(flow_steps, st.integers(0, 40))
def test_a_limiter_folded_from_its_snapshot_is_the_limiter_folded_from_the_start(
    steps: list[tuple[str, int]], cut: int
) -> None:
    kinds = {k for k, _ in steps}
    if "take" in kinds and "acquire" in kinds:
        steps = [(k, r) for k, r in steps if k != "take"]  # a limiter is one kind or the other
    decisions: list[tuple[AnyFlowEvent, ...]] = []
    state = INITIAL_FLOW
    for at_ms, (kind, run) in enumerate(steps):
        if at_ms == cut:
            snap = SnapshotFlow(limiter_id=LIMITER, task=NO_TASK, at_ms=at_ms)
            decisions.append(decide_flow(state, snap))
            state = fold_flow(state, decisions[-1])
        events = decide_flow(state, flow_command(kind, run, at_ms))
        decisions.append(events)
        state = fold_flow(state, events)
    assert fold_flow(INITIAL_FLOW, [e for events in decisions for e in events]) == state
    for index, events in enumerate(decisions):  # replay from the snapshot taken at `cut`
        if events and isinstance(events[0], FlowSnapshotted):
            rest = [e for later in decisions[index:] for e in later]
            assert fold_flow(INITIAL_FLOW, rest) == state
    snap = SnapshotFlow(limiter_id=LIMITER, task=NO_TASK, at_ms=99)
    snapshot = decide_flow(state, snap)
    if state.limiter_id:
        assert fold_flow(INITIAL_FLOW, decode_flow(encode_flow(snap, snapshot)).events) == state
    else:
        assert snapshot == ()


# -- real NATS ----------------------------------------------------------------------------


class EngineSide:
    """What AdmissionRuntime needs of an engine: the real history log (no runs are decided)."""

    def __init__(self, js: JetStreamContext) -> None:
        self.history: EventLog = JetStreamEventLog(js)

    async def load(self, run_id: str) -> Any:
        raise AssertionError(f"no run is loaded here ({run_id})")

    def cached(self, run_id: str) -> Any:
        return None  # (no run is cached here)

    def forget(self, run_id: str) -> None:
        raise AssertionError(f"no run is cached here ({run_id})")


async def _never(*_: object) -> Any:
    raise AssertionError("no run is decided here")


def runtime(js: JetStreamContext, after: int) -> AdmissionRuntime:
    admission = AdmissionRuntime(EngineSide(js), _never)
    admission.compactor.after = after
    admission.compactor.purge = history_purger(js)
    return admission


async def subject_messages(js: JetStreamContext, gate_id: str) -> int:
    info = await js.stream_info(HISTORY_STREAM, subjects_filter=history_subject(gate_id))
    return (info.state.subjects or {}).get(history_subject(gate_id), 0)


def request(run: int) -> RequestAdmission:
    return RequestAdmission(gate_id=GATE, run_id=f"r{run}", at_ms=run, limit=1, workflow="c")


async def test_a_gate_compacts_to_a_short_subject_with_the_same_state(
    private_js: JetStreamContext,
) -> None:
    admission = runtime(private_js, after=5)
    for run in range(12):  # one holder, eleven waiting: twelve appends
        await admission.decide_gate(request(run))
    await admission.decide_gate(ReleaseAdmission(gate_id=GATE, run_id="r0", at_ms=20))
    state = await admission.gate_state(GATE)
    assert state.holders == ("r1",) and len(state.waiting) == 10
    assert admission.counters["snapshots"] == 2 and admission.compactor.counters["purged"] == 2
    assert await subject_messages(private_js, GATE) <= 5  # the snapshot and what followed
    fresh = runtime(private_js, after=5)  # another engine, reading the compacted subject
    assert await fresh.gate_state(GATE) == state
    stored = [decode_admission(data) async for _, data in fresh.engine.history.read(GATE)]
    assert isinstance(stored[0].command, SnapshotAdmission), stored[0]


async def test_a_crash_between_snapshot_and_purge_loses_nothing(
    private_js: JetStreamContext,
) -> None:
    admission = runtime(private_js, after=4)

    async def crashed(aggregate_id: str, seq: int) -> None:
        raise ConnectionError("the engine died before its purge")

    admission.compactor.purge = crashed
    for run in range(5):
        await admission.decide_gate(request(run))
    assert admission.counters["snapshots"] == 1
    assert admission.compactor.counters["purge_failures"] == 1
    assert await subject_messages(private_js, GATE) == 6  # five decisions and the snapshot
    state = await admission.gate_state(GATE)
    restarted = runtime(private_js, after=4)  # fresh caches: the snapshot is read, not trusted
    assert await restarted.gate_state(GATE) == state
    for run in range(5, 9):  # one since the snapshot, three more: the next one is due
        await restarted.decide_gate(request(run))
    assert restarted.compactor.counters["purged"] == 1  # below its own snapshot: both go
    assert await subject_messages(private_js, GATE) == 2  # the new snapshot, one after it
    assert await runtime(private_js, after=4).gate_state(GATE) == await restarted.gate_state(GATE)
    assert len((await restarted.gate_state(GATE)).waiting) == 8


async def test_appends_racing_a_due_snapshot_make_one_snapshot() -> None:
    """The compaction runs outside the gate's lock: an append that lands while a due snapshot
    is being appended is counted toward the next one, not made a second snapshot (with the
    first purge held, the second purged the first's snapshot away)."""
    compactor = Compactor()
    compactor.after = 2
    compactor.loaded("gate", 1)
    snapshots: list[int] = []
    appended = asyncio.Event()

    async def snapshot() -> int:
        snapshots.append(len(snapshots) + 1)
        await appended.wait()  # the snapshot's append is still on its way
        return 100 + len(snapshots)

    counted: list[str] = []
    first = asyncio.create_task(compactor.after_append("gate", snapshot, counted.append))
    await asyncio.sleep(0)  # the first is due and waits in its snapshot
    second = asyncio.create_task(compactor.after_append("gate", snapshot, counted.append))
    await asyncio.sleep(0)
    appended.set()
    await asyncio.gather(first, second)
    assert snapshots == [1], snapshots
    assert counted == ["snapshots"], counted
