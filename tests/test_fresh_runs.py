"""Which commands the engine decides on a run taken as new without reading its history
(dagnats/runtime/fresh_runs.py): a root run's first delivered start of a workflow without
admission rules, and nothing else."""

from __future__ import annotations

import msgspec
import pytest

from dagnats.runtime.fresh_runs import fresh_start
from kernel.commands import AnyCommand, CancelRun, ScheduleRun, StartRun
from kernel.workflow import StepDef, WorkflowDef
from kernel.workflow.model import Admission

WORKFLOW = WorkflowDef(name="one", steps=(StepDef(id="a", task="t"),))
START = StartRun(run_id="r1", at_ms=1, seed=7, workflow=WORKFLOW, input=msgspec.Raw(b"null"))
GATED = msgspec.structs.replace(WORKFLOW, admission=Admission(max_runs=1))


@pytest.mark.parametrize(
    ("command", "deliveries", "fresh"),
    [
        (START, 1, True),  # a root run's first delivery
        (START, 2, False),  # a redelivery may find its own decision stored
        (START, 5, False),
        (msgspec.structs.replace(START, parent_run_id="p", parent_step_id="s", depth=1), 1,
         False),  # a child's repeated start reports again to its parent
        (msgspec.structs.replace(START, continued_from="r0", chain_root="r0", chain_index=1), 1,
         False),  # a successor's likewise
        (msgspec.structs.replace(START, workflow=GATED), 1, False),  # admission reads state
        (ScheduleRun(run_id="r1", at_ms=1, start=START, run_at_ms=9), 1, False),
        (CancelRun(run_id="r1", at_ms=1), 1, False),
    ],
)  # fmt: skip
def test_only_a_root_runs_first_start_without_admission_is_fresh(
    command: AnyCommand, deliveries: int, fresh: bool
) -> None:
    assert fresh_start(command, deliveries) is fresh
