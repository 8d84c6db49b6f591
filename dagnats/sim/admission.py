"""Racing engines on one admission gate, simulated: never over the limit, none left behind.

`simulate_gate(seed, ...)` runs `engines` real `Engine`s (unchanged) on one in-memory history
log. Starts of a gated workflow and the results of its tasks go, in a seeded random order, to a
random engine; each engine keeps its own caches, so they decide on stale states and race on the
gate's subject (OCC settles it). An engine crashes after an append with probability
`crash_rate` (after a gate's append: between admission and the run's start), and is replaced by
a fresh one; the command it held is delivered again. The returned `GateReport` lists every
violation of the rules found by scanning the log in append order:

- never more running runs of the gate than its limit;
- no run both skipped and started;
- at the end, every run ended (none left pending while a slot was free).

A workflow with `max_task_concurrency` races its task limiters the same way (each task's slot
taken before its message is published, the run's ended attempts released in the next task's
acquire or after the command): every publish is checked against the limit, counting the
tasks published whose result was not yet delivered (`max_tasks_running`).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Final

import msgspec

from dagnats.runtime.engine import Engine
from dagnats.sim.memory import LogPort, MemoryEventLog, VirtualTime
from kernel import codec
from kernel.admission import is_gate_id
from kernel.admission_flow import AcquireSlot, decode_flow, is_limiter_id
from kernel.commands import AnyCommand, CompleteTask, StartRun
from kernel.effects import EnqueueTask
from kernel.events import RunQueued, StepScheduled
from kernel.reducer import evolve
from kernel.state import INITIAL_STATE, RunState, is_terminal
from kernel.workflow import WorkflowDef

rounds_max: Final = 10_000


class EngineCrashed(BaseException):
    """The simulated engine died (after an append, before anything else)."""


class CrashingLog(LogPort):
    """A log port whose engine dies after an append, with a seeded probability."""

    def __init__(self, log: MemoryEventLog, rng: random.Random, crash_rate: float) -> None:
        super().__init__(log)
        self.rng = rng
        self.crash_rate = crash_rate
        self.crashes = 0

    async def append(
        self, run_id: str, payload: bytes, *, msg_id: str, expected_last_seq: int
    ) -> int:
        seq = await super().append(
            run_id, payload, msg_id=msg_id, expected_last_seq=expected_last_seq
        )
        if self.rng.random() < self.crash_rate:
            self.crashes += 1
            raise EngineCrashed(run_id)
        return seq


class Effects:
    """Tasks, timers and dead letters of all engines (tasks become results to deliver), and
    the tasks running per type (published, result not yet delivered) at their most."""

    def __init__(self, task_limits: dict[str, int] | None = None) -> None:
        self.tasks: dict[str, EnqueueTask] = {}
        self.dead: list[str] = []
        self.task_limits = task_limits or {}
        self.running: dict[tuple[str, str, int], str] = {}  # attempt -> its task type
        self.done: set[tuple[str, str, int]] = set()
        self.max_running = 0
        self.violations: list[str] = []

    async def publish(self, task_type: str, payload: bytes, msg_id: str) -> None:
        effect = msgspec.json.decode(payload, type=EnqueueTask)
        self.tasks.setdefault(msg_id, effect)
        attempt = (effect.run_id, effect.step_id, effect.attempt)
        if attempt in self.done or effect.task not in self.task_limits:
            return
        self.running[attempt] = effect.task
        running = sum(1 for each in self.running.values() if each == effect.task)
        self.max_running = max(self.max_running, running)
        if running > self.task_limits[effect.task]:
            self.violations.append(f"{running} tasks {effect.task} running at {attempt}")

    def delivered(self, command: AnyCommand) -> None:
        """A task's result is delivered: it runs no more (counted from here, so a slot
        released only after it is never counted twice)."""
        if isinstance(command, CompleteTask):
            attempt = (command.run_id, command.step_id, command.attempt)
            self.done.add(attempt)
            self.running.pop(attempt, None)

    async def arm(self, run_id: str, timer_id: str, fire_at_ms: int, payload: bytes) -> None:
        return None

    async def cancel(self, run_id: str, timer_id: str) -> None:
        return None

    async def publish_dead(self, kind: str, payload: bytes, reason: str) -> None:
        self.dead.append(f"{kind}: {reason}")


class GateReport(msgspec.Struct, kw_only=True):
    seed: int
    runs: int = 0
    crashes: int = 0
    max_running: int = 0
    max_tasks_running: int = 0
    batched_releases: int = 0  # limiter appends releasing ended attempts in an acquire
    violations: list[str] = msgspec.field(default_factory=list)


def simulate_gate(
    seed: int, workflow: WorkflowDef, inputs: list[bytes], *, engines: int = 2,
    crash_rate: float = 0.1,
) -> GateReport:  # fmt: skip
    """Run the starts of `inputs` through racing, crashing engines; report what broke."""
    return asyncio.run(_simulate(seed, workflow, inputs, engines, crash_rate))


async def _simulate(
    seed: int, workflow: WorkflowDef, inputs: list[bytes], engines: int, crash_rate: float
) -> GateReport:
    rng = random.Random(seed)
    log = MemoryEventLog(VirtualTime())
    assert workflow.admission is not None
    effects = Effects({each.task: each.limit for each in workflow.admission.max_task_concurrency})
    ports = [CrashingLog(log, rng, crash_rate) for _ in range(engines)]
    crashes = 0

    def fresh(index: int) -> Engine:
        return Engine(ports[index], effects, effects, effects)

    pool = [fresh(i) for i in range(engines)]
    inbox: list[AnyCommand] = [
        StartRun(run_id=f"r{n}", at_ms=1_000 + n, workflow=workflow, input=msgspec.Raw(data))
        for n, data in enumerate(inputs)
    ]
    answered: set[str] = set()
    for round_ in range(rounds_max):
        for msg_id, task in effects.tasks.items():
            if msg_id not in answered:
                answered.add(msg_id)
                inbox.append(_result(task, 10_000 + round_))
        if not inbox:
            break
        command = inbox.pop(rng.randrange(len(inbox)))
        effects.delivered(command)
        index = rng.randrange(engines)
        try:
            await pool[index].handle(codec.encode(command))
        except EngineCrashed:
            crashes += 1
            pool[index] = await restarted(fresh, index)
            inbox.append(command)  # not acked: delivered again
    report = _check(log, workflow, len(inputs), seed)
    report.crashes = crashes
    report.max_tasks_running = effects.max_running
    report.violations.extend(effects.violations)
    return report


async def restarted(
    fresh: Callable[[int], Engine], index: int, attempts_max: int = rounds_max
) -> Engine:
    """A new engine in place of a crashed one, once its restart (resume_all) went through
    (at most `attempts_max` tries: a restart crashes too, by the same dice)."""
    for _ in range(attempts_max):
        engine = fresh(index)
        try:
            await engine.resume_all()
        except EngineCrashed:
            continue
        return engine
    raise AssertionError("an engine never restarted")


def _result(task: EnqueueTask, at_ms: int) -> CompleteTask:
    return CompleteTask(
        run_id=task.run_id, at_ms=at_ms, step_id=task.step_id, attempt=task.attempt,
        output=msgspec.Raw(b'{"ok":true}'),
    )  # fmt: skip


def _check(log: MemoryEventLog, workflow: WorkflowDef, runs: int, seed: int) -> GateReport:
    """Scan the log in append order: running runs per gate within the limit, no skipped run
    that started, every run ended."""
    assert workflow.admission is not None
    admission = workflow.admission
    limit = admission.max_runs or (1 if admission.singleton is not None else 0)
    report = GateReport(seed=seed, runs=runs)
    states: dict[str, RunState] = {}
    running: set[str] = set()
    skipped: set[str] = set()

    for message in log.messages:
        if is_limiter_id(message.run_id):
            command = decode_flow(message.payload).command
            if isinstance(command, AcquireSlot) and command.releasing:
                report.batched_releases += 1
        if is_gate_id(message.run_id):
            continue
        state = states.get(message.run_id, INITIAL_STATE)
        for event in codec.decode_decision(message.payload).events:
            state = evolve(state, event)
            if isinstance(event, RunQueued) and event.reason == "skipped":
                skipped.add(message.run_id)
            if isinstance(event, StepScheduled) and message.run_id in skipped:
                report.violations.append(f"run {message.run_id} skipped and started")
        states[message.run_id] = state
        if state.status in ("running", "compensating"):
            running.add(message.run_id)
        else:
            running.discard(message.run_id)
        report.max_running = max(report.max_running, len(running))
        if limit and len(running) > limit:
            report.violations.append(f"message {message.seq}: {len(running)} running > {limit}")
    for run_id in (f"r{n}" for n in range(runs)):
        found = states.get(run_id)
        if found is None or not is_terminal(found):
            status = found.status if found is not None else "no history"
            report.violations.append(f"run {run_id} left {status}")
    return report
