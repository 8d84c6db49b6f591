"""The client side of run lifecycle operations: retry in place, rerun, terminate, dead letters.

Each operation is checked against the run's state with the kernel's own rules first
(`kernel.decide`, so the caller learns at once what the engine would refuse), then sent as a
command (`ReopenRun`, `TerminateRun`, `DiscardDeadLetter`; kernel.reopen) deduplicated on a
message id derived from the run's state, so sending it twice is one operation. Dead letters
are derived from run state (`kernel.reopen.dead_letters`), listed from the query tables' run
index with a bound. No I/O of its own beyond the client's connection.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Final

import msgspec

from dagnats.client.errors import RunFinishedError
from dagnats.runtime import retention
from dagnats.runtime.clock import new_seed, now_ms
from dagnats.runtime.retention import PurgedRun
from dagnats.runtime.workers_directory import WorkerEntry, serving
from dagnats.runtime.workers_directory import list_workers as list_workers_in
from kernel.commands import (
    AnyCommand,
    DiscardDeadLetter,
    Rejection,
    ReopenRun,
    TerminateRun,
)
from kernel.decide import decide
from kernel.effects import in_life
from kernel.errors import DagnatsError
from kernel.reducer import evolve
from kernel.reopen import DeadLetter, dead_letters
from kernel.state import INITIAL_STATE, RunState, is_terminal

if TYPE_CHECKING:
    from dagnats.client.core import Client

runs_scanned_max: Final = 10_000  # runs read for a listing or a bulk selection
confirm_wait_s_default: Final = 10.0
WAITING_FOR_WORKER: Final = frozenset({"scheduled", "running"})  # its task is out
RETRYABLE: Final = frozenset({"failed", "compensate_failed", "cancelled", "terminated"})


class LifecycleRejectedError(DagnatsError):
    """The run's rules refuse the operation (the message says why, naming the run)."""

    def __init__(self, rejection: Rejection) -> None:
        super().__init__(rejection.message)
        self.run_id = rejection.run_id
        self.code = rejection.code


def _checked(state: RunState, command: AnyCommand) -> None:
    decided = decide(state, command)
    if isinstance(decided, Rejection):
        raise LifecycleRejectedError(decided)


async def retry(
    client: Client,
    run_id: str,
    *,
    from_step: str = "",
    reason: str = "",
    confirm_wait_s: float = confirm_wait_s_default,
) -> RunState:
    """Reopen an ended run in place from its failed steps (or `from_step` and downstream).

    Returns:
        The run's state once the engine recorded the reopen (or as it was, after
        `confirm_wait_s` without news).
    Raises:
        RunNotFoundError: no such run.
        LifecycleRejectedError: the run is running or completed, the step is unknown, ...
    """
    state = await client.get_run(run_id)
    command = ReopenRun(
        run_id=run_id, at_ms=now_ms(), seed=new_seed(), from_step=from_step,
        reopens=state.reopens, reason=reason,
    )  # fmt: skip
    _checked(state, command)
    await client.send(command, msg_id=in_life(f"reopen:{run_id}:{state.reopens}", state.seed))
    return await _await(client, run_id, lambda s: s.reopens > state.reopens, confirm_wait_s)


async def rerun(client: Client, run_id: str, *, new_run_id: str | None = None) -> str:
    """Start a new run of the same workflow definition with the same input; its id."""
    state = await client.get_run(run_id)
    assert state.workflow is not None, "a started run has its workflow"
    value = msgspec.json.decode(state.input)
    return await client.start(state.workflow, value, run_id=new_run_id)


async def terminate(client: Client, run_id: str, reason: str) -> None:
    """End a run at once, without compensation.

    Raises:
        RunNotFoundError: no such run.
        RunFinishedError: the run has already ended.
    """
    state = await client.get_run(run_id)
    if is_terminal(state):
        raise RunFinishedError(run_id, state.status)
    command = TerminateRun(run_id=run_id, at_ms=now_ms(), seed=new_seed(), reason=reason)
    await client.send(command, msg_id=in_life(f"terminate:{run_id}", state.seed))


async def discard(
    client: Client, run_id: str, step_id: str, attempt: int | None = None, reason: str = ""
) -> DeadLetter:
    """Discard the dead letter of `step_id` in the run (its latest when `attempt` is None)."""
    state = await client.get_run(run_id)
    letter = _find(state, step_id, attempt)
    command = DiscardDeadLetter(
        run_id=run_id, at_ms=now_ms(), seed=new_seed(), step_id=step_id,
        attempt=letter.attempt, reason=reason,
    )  # fmt: skip
    _checked(state, command)
    msg_id = in_life(f"discard:{run_id}:{step_id}:{letter.attempt}", state.seed)
    await client.send(command, msg_id=msg_id)
    key = f"{step_id}:{letter.attempt}"
    await _await(client, run_id, lambda s: key in s.discarded, confirm_wait_s_default)
    return letter


def _find(state: RunState, step_id: str, attempt: int | None) -> DeadLetter:
    for letter in dead_letters(state):
        if letter.step_id == step_id and attempt in (None, letter.attempt):
            return letter
    known = ", ".join(f"{d.step_id}#{d.attempt}" for d in dead_letters(state)) or "none"
    raise DagnatsError(
        f"run {state.run_id!r} has no dead letter for step {step_id!r}"
        + (f" attempt {attempt}" if attempt is not None else "")
        + f" (its dead letters: {known})"
    )


async def dead_letter(client: Client, run_id: str, step_id: str) -> DeadLetter:
    """The dead letter of `step_id` in the run."""
    return _find(await client.get_run(run_id), step_id, None)


async def list_dead_letters(
    client: Client, *, workflow: str | None = None, limit: int = 100
) -> list[DeadLetter]:
    """Dead letters across ended runs, newest first, at most `limit`."""
    states = await select_runs(client, workflow=workflow, statuses=RETRYABLE)
    letters = [letter for state in states for letter in dead_letters(state)]
    letters.sort(key=lambda d: d.at_ms or 0, reverse=True)
    return letters[:limit]


async def select_runs(
    client: Client,
    *,
    workflow: str | None = None,
    statuses: Iterable[str] = RETRYABLE,
    since_ms: int | None = None,
    limit: int = runs_scanned_max,
) -> list[RunState]:
    """Runs of `workflow` (any when None) in one of `statuses`, ended at or after
    `since_ms`, newest first (bounded by `runs_scanned_max` runs read)."""
    wanted = frozenset(statuses)
    states = await client.list_runs(limit=min(limit, runs_scanned_max))
    chosen = [
        state
        for state in states
        if state.status in wanted
        and (workflow is None or (state.workflow is not None and state.workflow.name == workflow))
        and (since_ms is None or (state.ended_at_ms or state.started_at_ms) >= since_ms)
    ]
    return chosen


async def _await(
    client: Client, run_id: str, done: Callable[[RunState], bool], timeout_s: float
) -> RunState:
    """The run's state once `done` holds for it (folded from its history as it is appended),
    or as it is after `timeout_s`."""
    state = INITIAL_STATE
    decisions = client.watch(run_id, timeout_s=timeout_s)
    async with contextlib.aclosing(decisions):
        async for _, decision in decisions:
            for event in decision.events:
                state = evolve(state, event)
            if done(state):
                return state
    return await client.get_run(run_id)


async def list_workers(client: Client, *, include_stale: bool = False) -> list[WorkerEntry]:
    """The live workers in the worker directory (README "Worker groups"): their task types,
    groups, concurrency, in-flight count and last heartbeat; with `include_stale`, also those
    whose heartbeats stopped but whose entry has not expired yet."""
    return await list_workers_in(client.connection.js, now_ms(), include_stale=include_stale)


async def groups_without_workers(client: Client, state: RunState) -> dict[str, str]:
    """Step id -> group, for each live step of the run whose tasks wait for a worker group
    no live worker serves (what `run show` says of them)."""
    if state.workflow is None or is_terminal(state):
        return {}
    waiting: dict[str, tuple[str, str]] = {}
    for step_def in state.workflow.steps:
        step = state.step(step_def.id)
        if step_def.worker_group and step is not None and step.status in WAITING_FOR_WORKER:
            waiting[step_def.id] = (step_def.task, step_def.worker_group)
    if not waiting:
        return {}
    live = await list_workers_in(client.connection.js, now_ms())
    return {
        step_id: group
        for step_id, (task, group) in waiting.items()
        if not serving(live, task, group)
    }


# -- deleting runs and workflows (retention; README "Dead letters, retries and termination") --


async def delete_run(client: Client, run_id: str, reason: str = "run delete") -> PurgedRun:
    """Purge one finished run: its history, snapshot, and (serve drops them) query rows.
    The client must be connected as admin (only admin may purge history).

    Raises:
        RunNotFoundError: no such run.
        RunStillOpenError: the run has not ended (nothing is purged).
    """
    return await retention.purge_run(client.connection.js, run_id, reason=reason, at_ms=now_ms())


async def purged_runs(client: Client, limit: int = 100) -> list[PurgedRun]:
    """The retention log: purged runs, newest first."""
    return await retention.purged_runs(client.connection.js, limit)


class WorkflowHasOpenRunsError(DagnatsError):
    """A workflow with open runs is deleted only with force (which cancels them first)."""

    hint = "cancel them first, or pass --force to cancel them and delete"

    def __init__(self, name: str, open_runs: list[str]) -> None:
        self.open_runs = open_runs
        shown = ", ".join(open_runs[:5]) + (" ..." if len(open_runs) > 5 else "")
        super().__init__(f"workflow {name!r} has {len(open_runs)} open run(s): {shown}")


async def open_runs_of(client: Client, name: str) -> list[RunState]:
    """The runs of workflow `name` that have not ended (bounded by `runs_scanned_max`)."""
    states = await client.list_runs(limit=runs_scanned_max)
    return [
        state
        for state in states
        if state.workflow is not None and state.workflow.name == name and not is_terminal(state)
    ]


async def delete_workflow(
    client: Client, name: str, *, force: bool = False, reason: str = "workflow deleted",
    confirm_wait_s: float = confirm_wait_s_default,
) -> list[str]:  # fmt: skip
    """Delete a registered workflow (every revision); the ids of the runs cancelled.

    Raises:
        WorkflowNotFoundError: no workflow of that name.
        WorkflowHasOpenRunsError: runs of it are open and `force` is not given.
    """
    await client.get_workflow(name)  # WorkflowNotFoundError
    open_runs = await open_runs_of(client, name)
    if open_runs and not force:
        raise WorkflowHasOpenRunsError(name, [state.run_id for state in open_runs])
    cancelled: list[str] = []
    for state in open_runs:
        with contextlib.suppress(RunFinishedError):  # it ended meanwhile
            await client.cancel(state.run_id, reason=reason)
            cancelled.append(state.run_id)
    for run_id in cancelled:
        await _await(client, run_id, is_terminal, confirm_wait_s)
    kv = await client.connection.workflows()
    await kv.purge(name)
    return cancelled
