"""The reducer's hot path: the shared step events go through a table by type (one handler each),
and a long run's step positions come from a memo read inline in `RunState.index_of`.

The fold must not depend on either: a run of more than `_scan_steps_max` steps, built by
`decide` (never by hand), folds to the same state whether the positions memo is warm or
cleared before every event, and every golden history folds the same way event by event with
the memo cleared. The states a fold builds are frozen and acyclic, so they are left out of the
cyclic GC (`gc=False`), which the last test pins.
"""

from __future__ import annotations

import gc
from pathlib import Path

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernel import reducer
from kernel import state as state_module
from kernel.codec import decode_decision, encode
from kernel.commands import AnyCommand, CompleteTask, FailTask, FireTimer, StartRun, TaskStarted
from kernel.decide import decide
from kernel.events import AnyEvent, RunStarted, StepRetryScheduled
from kernel.reducer import evolve, fold
from kernel.state import INITIAL_STATE, RunState
from kernel.timers import retry_timer_id
from kernel.workflow import RetryPolicy, StepDef, WorkflowDef

HISTORIES = Path(__file__).parent / "histories"


def _chain(steps: int) -> WorkflowDef:
    retry = RetryPolicy(max_attempts=3, strategy="fixed", initial_delay_ms=1_000)
    return WorkflowDef(
        name="fast-path",
        steps=tuple(
            StepDef(
                id=f"s{index}", task="work", retry=retry, timeout_ms=60_000,
                depends_on=(f"s{index - 1}",) if index else (),
            )
            for index in range(steps)
        ),
    )  # fmt: skip


def _apply(state: RunState, command: AnyCommand, events: list[AnyEvent]) -> RunState:
    decided = decide(state, command)
    assert isinstance(decided, tuple) and decided, f"{command!r} decided {decided!r}"
    events.extend(decided)
    for event in decided:
        state = evolve(state, event)
    return state


def _long_run(failures: list[int]) -> list[AnyEvent]:
    """A chain of len(failures) steps; step i fails failures[i] times, then completes."""
    events: list[AnyEvent] = []
    now = 1_000
    start = StartRun(run_id="r", at_ms=now, workflow=_chain(len(failures)))
    state = _apply(INITIAL_STATE, start, events)
    for index, failed in enumerate(failures):
        step_id = f"s{index}"
        for attempt in range(1, failed + 2):
            now += 10
            started = TaskStarted(run_id="r", at_ms=now, step_id=step_id, attempt=attempt)
            state = _apply(state, started, events)
            if attempt > failed:
                done = CompleteTask(
                    run_id="r", at_ms=now + 1, step_id=step_id, attempt=attempt,
                    output=msgspec.Raw(b'{"n":1}'),
                )  # fmt: skip
                state = _apply(state, done, events)
                break
            fail = FailTask(
                run_id="r", at_ms=now + 1, step_id=step_id, attempt=attempt, error="flaky"
            )
            state = _apply(state, fail, events)
            retry = events[-1]
            assert isinstance(retry, StepRetryScheduled), retry
            now = retry.due_at_ms
            timer = FireTimer(
                run_id="r", at_ms=now, timer_id=retry_timer_id(step_id, attempt + 1),
                kind="retry", step_id=step_id, attempt=attempt + 1,
            )  # fmt: skip
            state = _apply(state, timer, events)
    assert state.status == "completed", state.status
    return events


def _fold_with_cold_memo(events: list[AnyEvent]) -> RunState:
    state = INITIAL_STATE
    for event in events:
        state_module._positions_memo.clear()
        state = evolve(state, event)
    return state


@settings(max_examples=20, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=2), min_size=17, max_size=40))
def test_a_long_run_folds_the_same_with_a_warm_or_cold_positions_memo(failures: list[int]) -> None:
    assert len(failures) > state_module._scan_steps_max, "the memo's path, not the scan's"
    events = _long_run(failures)
    warm = fold(events)
    cold = _fold_with_cold_memo(events)
    assert encode(warm) == encode(cold)
    assert warm.event_count == len(events) == cold.event_count
    assert warm.completions == len(failures)
    assert [step.attempt for step in warm.steps] == [failed + 1 for failed in failures]
    assert all(step.status == "completed" for step in warm.steps)


def test_every_golden_history_folds_the_same_with_a_cold_positions_memo(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The golden runs have a few steps, under the scan's bound: with the bound at 0 every
    # step type's events find their step through the memo, warm and cold.
    monkeypatch.setattr(state_module, "_scan_steps_max", 0)
    names = sorted(HISTORIES.glob("*.jsonl"))
    folded = through_memo = 0
    for path in names:
        lines = path.read_bytes().splitlines()
        events = [event for line in lines for event in decode_decision(line).events]
        if not isinstance(events[0], RunStarted):
            continue  # a fragment kept for its old bytes (an upcast fixture)
        folded += 1
        state_module._positions_memo.clear()
        warm = fold(events)
        through_memo += bool(state_module._positions_memo)  # (a history with step events)
        assert encode(warm) == encode(_fold_with_cold_memo(events)), path.name
    assert folded >= 16 and through_memo >= 16, (folded, through_memo, names)


def test_each_shared_step_event_has_one_handler_and_is_counted_once() -> None:
    assert set(reducer._STEP_HANDLERS) == set(reducer._STEP_LIFECYCLE_TYPES)
    events = _long_run([1, 0])
    state = INITIAL_STATE
    for index, event in enumerate(events):
        state = evolve(state, event)
        assert state.event_count == index + 1, f"event {index} ({type(event).__name__})"


def test_fold_states_are_untracked_by_the_gc() -> None:
    state = fold(_long_run([1] * 20))
    assert not gc.is_tracked(state)
    assert not any(gc.is_tracked(step) for step in state.steps)
