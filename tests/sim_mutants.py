"""Engine variants with a planted bug, and the workflow the simulator must catch them on.

Each variant subclasses the real `Engine` and breaks one rule a correct system must keep; the
mutation tests (tests/test_sim_mutants.py) require the simulator to catch each within 200
seeds, while the real engine passes thousands. The last one is the engine as it was before
the simulator found its bug (a command decided to nothing on a stale cached state was acked).
The projection variants break the query tables' contract with their runner; the worker
variant breaks the worker SDK's promise to keep a result until the server acknowledged it.
The last two engine variants and the worker variant leave every history well formed and every
run ending within its bound: only the reference model (`model_matches`) sees them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Final

import msgspec
from sqlite_utils import Database

from dagnats.runtime.engine import Engine, Loaded
from dagnats.runtime.protocols import (
    CommandMessage,
    CommandPublisher,
    DeadLetters,
    EventLog,
    TaskPublisher,
    Timers,
)
from dagnats.sim import SimCase
from dagnats.sim.bounds import run_bound_ms
from dagnats.sim.case import EngineFactory
from dagnats.sim.loop import SimLoop
from dagnats.sim.scheduler import Simulation
from dagnats.sim.stores import ProjectionStores
from dagnats.worker import TaskContext, TaskResult, Worker
from kernel import codec
from kernel.commands import FireTimer, StoredCommand, TaskStarted
from kernel.effects import AnyEffect, ArmTimer, EnqueueTask, task_msg_id
from kernel.events import AnyEvent, RunStarted
from kernel.state import RunState
from kernel.workflow import WorkflowDef
from kernel.workflow.builder import Retry, Workflow
from projections.base import Position, SqliteProjection
from projections.sqlite import QueryTables

CHAIN_STEPS: Final = 10


def chain_workflow(steps: int = CHAIN_STEPS) -> WorkflowDef:
    """s0 -> s1 -> ... with retries (3 attempts) and a step timeout: every fault heals."""
    builder = Workflow("sim-chain", timeout="1h")
    for index in range(steps):
        builder = builder.task(
            f"s{index}",
            task="work",
            depends_on=[f"s{index - 1}"] if index else [],
            retry=Retry(max_attempts=3, initial_delay="100ms"),
            timeout="30s",
        )
    return builder.build()


def chain_worker() -> Worker:
    worker = Worker()

    @worker.task("work")
    async def work(context: TaskContext) -> dict[str, object]:
        return {"step": context.step_id, "attempt": context.attempt}

    return worker


def factory(engine_type: type[Engine]) -> EngineFactory:
    """An engine factory for `SimCase` building the given engine variant."""

    def build(history: EventLog, tasks: TaskPublisher, timers: Timers, dead: DeadLetters) -> Engine:
        return engine_type(history, tasks, timers, dead)

    return build


class AckBeforeAppend(Engine):
    """Acks each command before deciding it: a crash in between loses the command."""

    async def _handle_group(self, group: list[CommandMessage]) -> None:
        for message in group:
            await message.ack()
            await self.handle(message.data)


class IgnoreExpectedSequence(Engine):
    """Appends under whatever the history's last sequence is now, not the one it decided on."""

    async def _append(
        self, loaded: Loaded, command: StoredCommand, events: tuple[AnyEvent, ...],
        payload: bytes = b"", states: tuple[RunState, ...] = (),
    ) -> tuple[list[AnyEffect], RunState]:  # fmt: skip
        current = await self.history.last_seq(command.run_id)
        unchecked = Loaded(state=loaded.state, last_seq=current)
        return await super()._append(unchecked, command, events, payload, states)


class RedispatchCompletedOnResume(Engine):
    """After a restart, dispatches completed steps again (as a next attempt)."""

    async def resume_run(self, run_id: str) -> bool:
        resumed = await super().resume_run(run_id)
        if not resumed:
            return resumed
        state = (await self.load(run_id)).state
        for step, step_def in zip(state.steps, state.step_defs, strict=True):
            if step.status != "completed" or step_def.task is None:
                continue
            attempt = step.attempt + 1
            task = EnqueueTask(
                run_id=run_id,
                step_id=step.step_id,
                attempt=attempt,
                task=step_def.task,
                input=step.input,
                metadata=step_def.metadata,
                msg_id=task_msg_id(run_id, step.step_id, attempt, state.seed),
            )
            await self.tasks.publish(step_def.task, codec.encode(task), task.msg_id)
        return resumed


class TimerFiresTwice(Engine):
    """Issues the effects of a timer's decision twice, the second time outside the stable
    message ids (so the dedup that makes a double fire harmless cannot help)."""

    async def _append(
        self, loaded: Loaded, command: StoredCommand, events: tuple[AnyEvent, ...],
        payload: bytes = b"", states: tuple[RunState, ...] = (),
    ) -> tuple[list[AnyEffect], RunState]:  # fmt: skip
        effects, state = await super()._append(loaded, command, events, payload, states)
        if not isinstance(command, FireTimer):
            return effects, state
        again = [
            msgspec.structs.replace(effect, msg_id=f"{effect.msg_id}:again")
            for effect in effects
            if isinstance(effect, EnqueueTask)
        ]
        return effects + again, state


class TrustStaleCache(Engine):
    """Decides on its cached state without checking the history moved (the bug `dagnats sim`
    found: with two engines, a result decided to nothing on a stale state was acked, lost)."""

    async def _moved(self, loaded: Loaded, run_id: str) -> bool:
        return False


class DropRetry(Engine):
    """Never arms the timer that starts a retry: a step that failed waits for it forever (the
    run then fails by its timeout, within its bound, or never ends)."""

    async def _execute_one(self, effect: AnyEffect) -> None:
        if isinstance(effect, ArmTimer) and effect.command.kind == "retry":
            return
        await super()._execute_one(effect)


MUTANTS: Final[dict[str, type[Engine]]] = {
    "drop_retry": DropRetry,
    "ack_before_append": AckBeforeAppend,
    "ignore_expected_sequence": IgnoreExpectedSequence,
    "redispatch_completed_on_resume": RedispatchCompletedOnResume,
    "timer_fires_twice": TimerFiresTwice,
    "trust_stale_cache": TrustStaleCache,
}


class LoseResult(Worker):
    """Sends a result once and, when that publish fails, acks the task anyway and never sends
    it again: a result never stored is lost, and the attempt never ends (unless its step has a
    timeout; the task was acked, so no worker finds it again and reports it lost)."""

    async def _send(
        self, commands: CommandPublisher, command: TaskStarted | TaskResult, kind: str, key: str,
        token: str | None = None,
    ) -> None:  # fmt: skip
        if kind != "result":
            await super()._send(commands, command, kind, key, token)
            return
        msg_id = f"{kind}:{key}"
        with contextlib.suppress(ConnectionError):
            await commands.publish_command(
                command.run_id, codec.encode(command), msg_id, token=token
            )


WORKER_MUTANTS: Final[dict[str, type[Worker]]] = {"lose_result": LoseResult}


class ProjectionCommitsInFlush(QueryTables):
    """Commits its own writes: a crash between them and the checkpoint leaves the batch
    applied but not checkpointed, so its redelivery applies it a second time."""

    def flush(self, db: Database) -> None:
        super().flush(db)
        db.conn.commit()


class ProjectionForgetsRunsOnRestart(QueryTables):
    """Knows the runs it saw start only in memory: after a restart it skips every event of a
    run that started before (instead of loading the run's state stored with the rows)."""

    def __init__(self) -> None:
        super().__init__()
        self._started: set[str] = set()

    def apply(self, db: Database, event: AnyEvent, at: Position) -> None:
        if isinstance(event, RunStarted):
            self._started.add(at.run_id)
        elif at.run_id not in self._started:
            return
        super().apply(db, event, at)


PROJECTION_MUTANTS: Final[dict[str, Callable[[], SqliteProjection]]] = {
    "projection_commits_in_flush": ProjectionCommitsInFlush,
    "projection_forgets_runs_on_restart": ProjectionForgetsRunsOnRestart,
}


def simulate_chain(seed: int, stores: ProjectionStores | None = None) -> Simulation:
    """One seed of the chain workflow and worker under the default faults, checked ok."""
    case = SimCase(workflow=chain_workflow(), worker=chain_worker())
    simulation = Simulation(case, seed, bound_ms=run_bound_ms(case.workflow), stores=stores)
    loop = SimLoop()  # type: ignore[abstract]
    try:
        result = loop.run_until_complete(simulation.run())
    finally:
        loop.close()
    assert result.ok, result.violations
    return simulation
