"""Reopen and terminate at random points, simulated: kept steps never re-run, a terminated
run ends with no compensation.

`simulate_lifecycle(seed, workflow, runs, ...)` runs `engines` real `Engine`s (unchanged) on
one in-memory history log, as `dagnats/sim/admission.py` does: the runs' starts, their tasks'
results (a result fails for good with probability `fail_rate`, so runs fail and compensate),
and operator commands go, in a seeded random order, to a random engine, each with its own
caches (they decide on stale states and race on OCC). An engine crashes after an append with
probability `crash_rate` and is replaced by a fresh one (`resume_all`); the command it held is
delivered again. At random points the operator sends, for a random run:

- `TerminateRun` (`dagnats run terminate`), with probability `terminate_rate` a round;
- `ReopenRun` (`dagnats run retry`, from the failed steps or from a random step), with
  probability `reopen_rate` a round, carrying the reopen count read from the log as the CLI
  does (a raced or stale one decides to nothing); at most `reopens_per_run_max` per run.

The operator goes on for `idle_rounds_max` rounds after nothing is left to deliver, so ended
runs (failed, cancelled, terminated) are reopened too.

The returned `LifecycleReport` lists every violation found by scanning the log in append
order: a step kept by a reopen (completed, not in its `reset`) scheduled or completed again;
a compensation event after `run.terminated` (before a reopen); a run not ended at the end; a
terminated run (at the end) whose status is not `terminated`.
"""

from __future__ import annotations

import asyncio
import random
from typing import Final

import msgspec

from dagnats.runtime.engine import Engine
from dagnats.sim.admission import CrashingLog, Effects, EngineCrashed, restarted
from dagnats.sim.memory import MemoryEventLog, VirtualTime
from kernel import codec
from kernel.admission import is_gate_id
from kernel.commands import (
    AnyCommand,
    CompleteTask,
    FailTask,
    ReopenRun,
    StartRun,
    TerminateRun,
)
from kernel.effects import EnqueueTask
from kernel.events import (
    CompensationStarted,
    RunReopened,
    RunTerminated,
    StepCompensated,
    StepCompleted,
    StepScheduled,
)
from kernel.reducer import evolve
from kernel.state import INITIAL_STATE, RunState, is_terminal
from kernel.workflow import WorkflowDef

rounds_max: Final = 20_000
reopens_per_run_max: Final = 3  # operator reopens of one run in a seed (so every run ends)
idle_rounds_max: Final = 200  # rounds with nothing to deliver, for the operator, before the end


class LifecycleReport(msgspec.Struct, kw_only=True):
    seed: int
    runs: int = 0
    crashes: int = 0
    reopens: int = 0  # reopens sent (a raced one decides to nothing)
    terminates: int = 0
    reopened: int = 0  # `run.reopened` events in the log
    terminated: int = 0  # `run.terminated` events in the log
    violations: list[str] = msgspec.field(default_factory=list)


class _Operator:
    """The operator's dice: which run to terminate or reopen now, read from the log."""

    def __init__(
        self, rng: random.Random, log: MemoryEventLog, workflow: WorkflowDef,
        reopen_rate: float, terminate_rate: float,
    ) -> None:  # fmt: skip
        self.rng, self.log, self.workflow = rng, log, workflow
        self.reopen_rate, self.terminate_rate = reopen_rate, terminate_rate
        self.sent_reopens: dict[str, int] = {}
        self.terminates = 0

    def commands(self, run_ids: list[str], at_ms: int) -> list[AnyCommand]:
        out: list[AnyCommand] = []
        if self.rng.random() < self.terminate_rate:
            run_id = run_ids[self.rng.randrange(len(run_ids))]
            self.terminates += 1
            out.append(TerminateRun(run_id=run_id, at_ms=at_ms, reason="simulated terminate"))
        if self.rng.random() < self.reopen_rate:
            run_id = run_ids[self.rng.randrange(len(run_ids))]
            if self.sent_reopens.get(run_id, 0) < reopens_per_run_max:
                self.sent_reopens[run_id] = self.sent_reopens.get(run_id, 0) + 1
                steps = [s.id for s in self.workflow.steps]
                from_step = "" if self.rng.random() < 0.5 else self.rng.choice(steps)
                seen = _state_of(self.log, run_id)
                out.append(
                    ReopenRun(
                        run_id=run_id, at_ms=at_ms, from_step=from_step, reopens=seen.reopens,
                        reason="simulated retry",
                    )
                )  # fmt: skip
        return out


def simulate_lifecycle(
    seed: int, workflow: WorkflowDef, runs: int, *, engines: int = 2, crash_rate: float = 0.05,
    reopen_rate: float = 0.05, terminate_rate: float = 0.02, fail_rate: float = 0.3,
) -> LifecycleReport:  # fmt: skip
    """Run `runs` starts through racing, crashing engines and a random operator."""
    return asyncio.run(
        _simulate(seed, workflow, runs, engines, crash_rate, reopen_rate, terminate_rate,
                  fail_rate)
    )  # fmt: skip


async def _simulate(
    seed: int, workflow: WorkflowDef, runs: int, engines: int, crash_rate: float,
    reopen_rate: float, terminate_rate: float, fail_rate: float,
) -> LifecycleReport:  # fmt: skip
    rng = random.Random(seed)
    log = MemoryEventLog(VirtualTime())
    effects = Effects()
    ports = [CrashingLog(log, rng, crash_rate) for _ in range(engines)]
    operator = _Operator(rng, log, workflow, reopen_rate, terminate_rate)
    run_ids = [f"r{n}" for n in range(runs)]

    def fresh(index: int) -> Engine:
        return Engine(ports[index], effects, effects, effects)

    pool = [fresh(i) for i in range(engines)]
    inbox: list[AnyCommand] = [
        StartRun(run_id=run_id, at_ms=1_000 + n, workflow=workflow) for n, run_id in
        enumerate(run_ids)
    ]  # fmt: skip
    answered: set[str] = set()
    crashes = idle = 0
    for round_ in range(rounds_max):
        at_ms = 10_000 + round_
        for msg_id, task in effects.tasks.items():
            if msg_id not in answered:
                answered.add(msg_id)
                inbox.append(_result(task, at_ms, rng.random() < fail_rate))
        inbox.extend(operator.commands(run_ids, at_ms))
        idle = 0 if inbox else idle + 1
        if idle > idle_rounds_max:
            break
        if not inbox:
            continue
        command = inbox.pop(rng.randrange(len(inbox)))
        index = rng.randrange(engines)
        try:
            await pool[index].handle(codec.encode(command))
        except EngineCrashed:
            crashes += 1
            pool[index] = await restarted(fresh, index, rounds_max)
            inbox.append(command)  # not acked: delivered again
    report = check_lifecycle(log, run_ids, seed)
    report.crashes = crashes
    report.reopens = sum(operator.sent_reopens.values())
    report.terminates = operator.terminates
    return report


def _result(task: EnqueueTask, at_ms: int, fails: bool) -> CompleteTask | FailTask:
    if fails:
        return FailTask(
            run_id=task.run_id, at_ms=at_ms, step_id=task.step_id, attempt=task.attempt,
            error="simulated failure", kind="non_retryable",
        )  # fmt: skip
    return CompleteTask(
        run_id=task.run_id, at_ms=at_ms, step_id=task.step_id, attempt=task.attempt,
        output=msgspec.Raw(b'{"ok":true}'),
    )  # fmt: skip


def _state_of(log: MemoryEventLog, run_id: str) -> RunState:
    state = INITIAL_STATE
    for message in log.messages:
        if message.run_id == run_id:
            for event in codec.decode_decision(message.payload).events:
                state = evolve(state, event)
    return state


class _Watch:
    """One run's scan: the steps its last reopen kept, whether it stands terminated."""

    def __init__(self) -> None:
        self.state = INITIAL_STATE
        self.kept: set[str] = set()
        self.terminated = False


def check_lifecycle(log: MemoryEventLog, run_ids: list[str], seed: int) -> LifecycleReport:
    """Scan the log in append order (see the module's docstring for the rules)."""
    report = LifecycleReport(seed=seed, runs=len(run_ids))
    watches: dict[str, _Watch] = {}
    for message in log.messages:
        if is_gate_id(message.run_id):
            continue
        watch = watches.setdefault(message.run_id, _Watch())
        where = f"message {message.seq} of {message.run_id}"
        for event in codec.decode_decision(message.payload).events:
            _check_event(watch, event, where, report)
            try:
                watch.state = evolve(watch.state, event)
            except AssertionError as refused:  # (a log no engine should have written)
                report.violations.append(f"{where}: the reducer refuses it ({refused})")
    for run_id in run_ids:
        found = watches.get(run_id)
        if found is None or not is_terminal(found.state):
            status = found.state.status if found is not None else "no history"
            report.violations.append(f"run {run_id} left {status}")
        elif found.terminated and found.state.status != "terminated":
            report.violations.append(f"run {run_id} terminated, yet {found.state.status}")
    return report


def _check_event(watch: _Watch, event: object, where: str, report: LifecycleReport) -> None:
    if isinstance(event, RunReopened):
        report.reopened += 1
        done = {s.step_id for s in watch.state.steps if s.status == "completed"}
        watch.kept = done - set(event.reset)
        watch.terminated = False
    elif isinstance(event, RunTerminated):
        report.terminated += 1
        watch.terminated = True
    elif isinstance(event, StepScheduled | StepCompleted) and event.step_id in watch.kept:
        kind = "scheduled" if isinstance(event, StepScheduled) else "completed"
        report.violations.append(f"{where}: kept step {event.step_id} {kind} again")
    elif isinstance(event, CompensationStarted | StepCompensated) and watch.terminated:
        report.violations.append(f"{where}: compensation after run.terminated")
