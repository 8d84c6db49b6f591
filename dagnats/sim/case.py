"""What one simulation is about (`SimCase`) and what one seed gives (`SeedResult`).

Imported by the scheduler, the runner, `dagnats.testing` and the `dagnats sim` command; imports
only the engine, the worker SDK, the sim's settings, faults and invariants, and `kernel`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import msgspec

from dagnats.runtime.engine import Engine
from dagnats.runtime.protocols import DeadLetters, EventLog, TaskPublisher, Timers
from dagnats.sim import settings
from dagnats.sim.faults import FaultPlan
from dagnats.sim.invariants import UserInvariant, Violation
from dagnats.sim.projector import ProjectionFactory
from dagnats.worker import Worker
from kernel.workflow import WorkflowDef
from projections.sqlite import QueryTables

EngineFactory = Callable[[EventLog, TaskPublisher, Timers, DeadLetters], Engine]


def default_engine(
    history: EventLog, tasks: TaskPublisher, timers: Timers, dead: DeadLetters
) -> Engine:
    """The engine that runs on NATS, unchanged."""
    return Engine(history, tasks, timers, dead)


@dataclass(frozen=True)
class SimCase:
    """What to simulate: a workflow, the handlers, the input, the faults and the bounds."""

    workflow: WorkflowDef
    worker: Worker
    input: bytes = b"null"
    faults: FaultPlan = field(default_factory=FaultPlan)
    runs: int = 1
    workers: int = settings.workers_default
    steps_max: int = settings.steps_per_seed_default
    bound_ms: int | None = None  # each run's bound of virtual time (None: computed)
    invariants: tuple[UserInvariant, ...] = ()
    engine_factory: EngineFactory = default_engine
    worker_type: type[Worker] = Worker  # the worker SDK each simulated worker runs (a mutant)
    swarm: bool = True
    # The SQLite projection fed from the history and checked against its rebuild (None: only
    # the snapshot projection runs).
    projection: ProjectionFactory | None = QueryTables

    def __post_init__(self) -> None:
        assert 1 <= self.runs <= settings.runs_per_seed_max, f"runs {self.runs}"
        assert 1 <= self.workers <= settings.workers_max, f"workers {self.workers}"
        assert 1 <= self.steps_max <= settings.steps_per_seed_max, f"steps {self.steps_max}"
        if self.bound_ms is not None:
            assert 1 <= self.bound_ms <= settings.horizon_ms_max, f"bound {self.bound_ms}"
        missing = sorted(
            {s.task for s in self.workflow.steps if s.task} - set(self.worker.handlers)
        )
        if missing:
            raise ValueError(
                f"the worker has no handler for task(s) {', '.join(missing)} of workflow "
                f"{self.workflow.name!r} (it has: {', '.join(sorted(self.worker.handlers))})"
            )


class SeedResult(msgspec.Struct, frozen=True, kw_only=True):
    """The outcome of one seed."""

    seed: int
    violations: tuple[Violation, ...]
    faults: dict[str, int]
    probabilities: dict[str, float]
    virtual_ms: int
    steps: int
    runs: dict[str, str]  # run id -> final status
    digest: str  # of every history message appended, in order
    trace: tuple[str, ...]
    projection_batches: int = 0  # batches the projections applied (crashed ones included)
    # The oracle's work, counted (what a test bounds instead of the wall clock): history
    # messages it decoded and events it folded, each once for all the invariants that use them.
    decodes: int = 0
    folds: int = 0

    @property
    def ok(self) -> bool:
        return not self.violations
