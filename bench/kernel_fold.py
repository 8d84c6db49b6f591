"""Benchmark: how fast the pure kernel replays history (decode + fold), against a bare decode.

A realistic history is built by running `decide` (never by hand): RUNS runs of a STEPS-step
chain in which every step fails once and succeeds on its retry. Every decision is encoded with
`kernel.codec.encode_decision`, as the engine appends it. Then, in this one process, each of
these is timed (best of REPEATS, `time.perf_counter`):

- fold: `evolve` over the already-decoded events of every run;
- decode+fold: `kernel.codec.decode_decision` of every message, then `evolve` (a replay);
- encode: `kernel.codec.encode_decision` of every decision;
- bare decode: `msgspec.json.Decoder(Decision).decode` of the same bytes, nothing else;
- decide: what the engine does per command, `decide` on the state before it, then `evolve` and
  `react` of each event it decided (`decide_us_per_command`: one decision's cost, the fold
  inside `decide` included).

Prints one JSON line; `value` is the decode+fold rate, `ratio` that rate over the bare decode
rate (the floor a replay cannot beat: how much the codec's checks and the fold add).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Final

import msgspec

from kernel.codec import decode_decision, encode_decision
from kernel.commands import AnyCommand, CompleteTask, FailTask, FireTimer, StartRun
from kernel.decide import decide
from kernel.events import AnyEvent, Decision, StepRetryScheduled
from kernel.react import react
from kernel.reducer import evolve, fold
from kernel.state import INITIAL_STATE, RunState
from kernel.timers import retry_timer_id
from kernel.workflow import RetryPolicy, StepDef, WorkflowDef

RUNS: Final = 2_000
STEPS: Final = 10
REPEATS: Final = 3

Message = tuple[AnyCommand, tuple[AnyEvent, ...]]


def chain_workflow(steps: int = STEPS) -> WorkflowDef:
    """A chain s0 -> s1 -> ... of task steps, each with one retry."""
    retry = RetryPolicy(max_attempts=2, strategy="fixed", initial_delay_ms=1_000)
    return WorkflowDef(
        name="bench-chain",
        steps=tuple(
            StepDef(
                id=f"s{index}",
                task="work",
                depends_on=(f"s{index - 1}",) if index else (),
                retry=retry,
                timeout_ms=60_000,
            )
            for index in range(steps)
        ),
    )


def _apply(state: RunState, command: AnyCommand, messages: list[Message]) -> RunState:
    decided = decide(state, command)
    assert isinstance(decided, tuple) and decided, f"{command!r} decided {decided!r}"
    messages.append((command, decided))
    for event in decided:
        state = evolve(state, event)
    return state


def build_run(workflow: WorkflowDef, run_id: str, start_ms: int) -> list[Message]:
    """One run's decisions: start, then per step a failure, its retry timer, a completion."""
    messages: list[Message] = []
    now = start_ms
    state = _apply(
        INITIAL_STATE,
        StartRun(run_id=run_id, at_ms=now, seed=start_ms, workflow=workflow),
        messages,
    )
    for step in workflow.steps:
        now += 10
        failure = FailTask(run_id=run_id, at_ms=now, step_id=step.id, attempt=1, error="flaky")
        state = _apply(state, failure, messages)
        retry = messages[-1][1][-1]
        assert isinstance(retry, StepRetryScheduled), retry
        now = retry.due_at_ms
        timer = FireTimer(
            run_id=run_id,
            at_ms=now,
            timer_id=retry_timer_id(step.id, 2),
            kind="retry",
            step_id=step.id,
            attempt=2,
        )
        state = _apply(state, timer, messages)
        now += 10
        output = msgspec.Raw(msgspec.json.encode({"step": step.id, "items": [1, 2, 3]}))
        done = CompleteTask(run_id=run_id, at_ms=now, step_id=step.id, attempt=2, output=output)
        state = _apply(state, done, messages)
    assert state.status == "completed", state.status
    return messages


def decide_all(runs: list[list[Message]]) -> Callable[[], None]:
    """The engine's work per command over `runs`: decide, then evolve and react per event."""

    def work() -> None:
        for run in runs:
            state = INITIAL_STATE
            for command, _ in run:
                decided = decide(state, command)
                assert isinstance(decided, tuple)
                for event in decided:
                    state = evolve(state, event)
                    react(state, event)

    return work


def _best(repeats: int, work: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - started)
    assert best > 0.0
    return best


def main() -> dict[str, object]:
    """Build the history, time the four loops, print and return the result line."""
    workflow = chain_workflow()
    runs = [build_run(workflow, f"run-{index}", 1_000_000 * index) for index in range(RUNS)]
    events_per_run = [[event for _, events in run for event in events] for run in runs]
    encoded = [[encode_decision(command, events) for command, events in run] for run in runs]
    flat = [data for run in encoded for data in run]
    total = sum(len(events) for events in events_per_run)
    finals = [fold(events) for events in events_per_run]
    assert all(state.status == "completed" for state in finals)

    def fold_only() -> None:
        for events in events_per_run:
            state = INITIAL_STATE
            for event in events:
                state = evolve(state, event)

    def decode_and_fold() -> None:
        for run in encoded:
            state = INITIAL_STATE
            for data in run:
                for event in decode_decision(data).events:
                    state = evolve(state, event)

    def encode_only() -> None:
        for run in runs:
            for command, events in run:
                encode_decision(command, events)

    bare = msgspec.json.Decoder(Decision)

    def bare_decode() -> None:
        for data in flat:
            bare.decode(data)

    fold_rate = total / _best(REPEATS, fold_only)
    replay_rate = total / _best(REPEATS, decode_and_fold)
    encode_rate = total / _best(REPEATS, encode_only)
    bare_rate = total / _best(REPEATS, bare_decode)
    decide_s = _best(REPEATS, decide_all(runs))
    result: dict[str, object] = {
        "bench": "kernel_fold",
        "value": round(replay_rate),
        "unit": "events/s",
        "ratio": round(replay_rate / bare_rate, 4),
        "fold_events_per_s": round(fold_rate),
        "encode_events_per_s": round(encode_rate),
        "bare_decode_events_per_s": round(bare_rate),
        "decide_us_per_command": round(decide_s / len(flat) * 1e6, 2),
        "events": total,
        "messages": len(flat),
        "runs": RUNS,
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
