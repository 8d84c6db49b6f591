"""Run state: the fold of a run's history. Frozen all the way down.

`RunState.steps` is aligned with `step_ids` (the workflow's steps in the order written), so a
step's state is found by position; updates build a new tuple.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from kernel import limits
from kernel.events import NULL, ErrorInfo
from kernel.step_states import NO_DYNAMIC, ApprovalState, DynamicState
from kernel.workflow import StepDef, WorkflowDef

RunStatus = Literal[
    "new",  # no run.started yet
    "pending",  # waiting for a slot of its admission gate (kernel/admission_run.py)
    "scheduled",  # waiting for its start time (kernel/admission_run.py)
    "running",
    "compensating",
    "completed",
    "failed",
    "compensate_failed",
    "cancelled",
    "continued_as_new",  # ended by starting a fresh run (steps/continuation.py, kernel.run_links)
    "terminated",  # ended at once without compensation (`dagnats run terminate`; kernel.reopen)
]
StepStatus = Literal[
    "pending",  # waiting on dependencies (or a handler waiting to be called)
    "scheduled",  # a task message is out for `attempt`
    "running",  # a worker took `attempt`
    "retry_wait",  # `attempt` will be scheduled at `retry_at_ms`
    "completed",
    "failed",  # failed for good (its on_failure handler may still recover it)
    "skipped",
    "recovered",  # failed, and its on_failure handler completed
]

TERMINAL_RUN_STATUSES: frozenset[str] = frozenset(
    {"completed", "failed", "compensate_failed", "cancelled", "continued_as_new", "terminated"}
)
DONE_STEP_STATUSES: frozenset[str] = frozenset({"completed", "skipped", "recovered"})
ACTIVE_STEP_STATUSES: frozenset[str] = frozenset({"scheduled", "running", "retry_wait"})


class DeferredTask(msgspec.Struct, frozen=True, kw_only=True):
    """A task attempt held back by flow control (kernel/admission_tasks.py)."""

    step_id: str
    attempt: int
    reason: Literal["rate_limited", "task_concurrency"]
    limiter_id: str
    until_ms: int | None = None


class StepState(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    step_id: str
    status: StepStatus = "pending"
    attempt: int = 0
    input: msgspec.Raw = NULL  # the input of the current attempt
    output: msgspec.Raw = NULL
    error: ErrorInfo | None = None
    deadline_ms: int | None = None
    retry_at_ms: int | None = None
    worker_id: str = ""
    first_scheduled_at_ms: int | None = None
    ended_at_ms: int | None = None
    completion_index: int = -1  # order of completion, for compensation in reverse
    compensated: bool = False
    wake_at_ms: int | None = None  # a step type's own timer (a sleep), while armed
    lost_attempts: int = 0  # attempts whose worker vanished (step.lost); not counted as failures
    attempt_base: int = 0  # attempts before the run's last reopen (the policy counts those after)


class ReceivedSignal(msgspec.Struct, frozen=True, kw_only=True):
    """A signal of the run, in arrival order, and the step that consumed it (if any)."""

    name: str
    payload: msgspec.Raw
    at_ms: int
    consumed_by: str | None = None
    signal_id: str = ""  # the sender's identity ("" for an old sender)


class RunState(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    run_id: str = ""
    status: RunStatus = "new"
    workflow: WorkflowDef | None = None
    input: msgspec.Raw = NULL
    seed: int = 0
    parent_run_id: str | None = None
    parent_step_id: str = ""  # a child run's parent sub_workflow step
    depth: int = 0  # sub-workflow depth (a root run is 0)
    detached: bool = False  # a detached child
    started_at_ms: int = 0
    ended_at_ms: int | None = None
    step_ids: tuple[str, ...] = ()
    step_defs: tuple[StepDef, ...] = ()
    steps: tuple[StepState, ...] = ()
    completions: int = 0
    output: msgspec.Raw = NULL
    error: ErrorInfo | None = None
    failed_step_id: str = ""
    cancel_reason: str | None = None
    compensation_outcome: str | None = None
    signals: tuple[ReceivedSignal, ...] = ()
    event_count: int = 0
    dynamic: DynamicState = NO_DYNAMIC  # appended steps, maps, agent loops (kernel.step_states)
    approvals: tuple[ApprovalState, ...] = ()  # asked and resolved (steps/approvals.py)
    continued_from: str | None = None  # continue-as-new links (kernel.run_links)
    continued_as: str | None = None
    continued_workflow: str = ""  # the workflow the run continued as
    chain_root: str = ""
    chain_index: int = 0
    # Lifecycle operations (kernel.reopen): reopens so far, the last one's time (the run's
    # timeout counts from it), and the dead letters discarded ("<step>:<attempt>").
    reopens: int = 0
    reopened_at_ms: int | None = None
    discarded: tuple[str, ...] = ()
    gate_id: str = ""  # its admission gate, once held (kernel/admission_run.py)
    run_at_ms: int | None = None  # a scheduled start's time
    holder_run_id: str = ""  # a skipped run: the run that held its singleton key
    deferred: tuple[DeferredTask, ...] = ()  # task attempts held by flow control

    def index_of(self, step_id: str) -> int:
        """Position of `step_id` in `steps`, or -1 (O(1) for a long run: `_positions`)."""
        step_ids = self.step_ids
        if len(step_ids) > _scan_steps_max:  # (the memo's hit inline: every step event asks)
            entry = _positions_memo.get(id(step_ids))
            if entry is not None and entry[0] is step_ids:
                return entry[1].get(step_id, -1)
            return _positions(step_ids).get(step_id, -1)
        try:
            return step_ids.index(step_id)
        except ValueError:
            return -1

    def step(self, step_id: str) -> StepState | None:
        """The state of `step_id`, or None when the run has no such step."""
        index = self.index_of(step_id)
        return self.steps[index] if index >= 0 else None

    def step_def(self, step_id: str) -> StepDef | None:
        """The definition of `step_id`, or None."""
        index = self.index_of(step_id)
        return self.step_defs[index] if index >= 0 else None


INITIAL_STATE = RunState()

# Positions of step ids, per `step_ids` tuple. A state update keeps the same tuple object
# (only a planner's append makes a new one), so one map serves every event of a run. Keyed by
# the tuple's id and checked by identity (the entry holds the tuple, so its id is not reused
# while cached): a pure memo, the same answers as `tuple.index`, cleared when full.
_scan_steps_max = 16  # up to this many steps a scan is as fast as the map
_positions_memo: dict[int, tuple[tuple[str, ...], dict[str, int]]] = {}


def _positions(step_ids: tuple[str, ...]) -> dict[str, int]:
    entry = _positions_memo.get(id(step_ids))
    if entry is not None and entry[0] is step_ids:
        return entry[1]
    positions: dict[str, int] = {}
    for index, step_id in enumerate(step_ids):
        positions.setdefault(step_id, index)  # the first, as tuple.index
    if len(_positions_memo) >= limits.step_positions_cached_max:
        _positions_memo.clear()
    _positions_memo[id(step_ids)] = (step_ids, positions)
    return positions


def is_terminal(state: RunState) -> bool:
    """Whether the run has ended (completed, failed, compensate_failed, cancelled)."""
    return state.status in TERMINAL_RUN_STATUSES
