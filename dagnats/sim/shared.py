"""What the seeds of one `run_seeds` call share: set up once per case, never part of an outcome.

A seed's world is its own (its log, queues, processes, dice); what is shared here is what
depends on the case alone and that no seed can change in a way another one could see:
- the user's handlers wrapped for the simulator (`processes.simulated_handler`: stateless
  wrappers that read the current call from a context variable);
- the projection's two in-memory databases, each seed restoring them as a first open left them
  (`projector.ProjectionStores.fresh`);
- the engines' memo of workflow definitions found valid (`Engine._valid_workflows`, keyed by
  the definition's bytes): each engine incarnation of each seed validated the case's one
  workflow again (~2% of a seed of the order example), with the same result every time
  (`validate_workflow` is a pure function of those bytes). An invalid workflow is never
  memoized, so a case that starts one is still refused by every engine.

This module may not read the wall clock, draw randomness or do I/O.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from dagnats.sim.case import SimCase
from dagnats.sim.processes import simulated_handler
from dagnats.sim.projector import ProjectionStores
from dagnats.worker import Handler

ENGINE_VALID_WORKFLOWS: str = "_valid_workflows"  # the engine's memo (dagnats/runtime/engine.py)


@dataclass(eq=False)
class CaseShared:
    """What every seed of one call of one case reuses (see the module)."""

    handlers: dict[str, Handler]
    stores: ProjectionStores | None
    valid_workflows: OrderedDict[bytes, None] = field(default_factory=OrderedDict)

    def share_with(self, engine: object) -> None:
        """Give a new engine the call's memo of valid workflows instead of its own empty one
        (an engine without such a memo, a mutant's, is left as it is)."""
        memo = getattr(engine, ENGINE_VALID_WORKFLOWS, None)
        if type(memo) is OrderedDict and not memo:
            setattr(engine, ENGINE_VALID_WORKFLOWS, self.valid_workflows)


def case_shared(case: SimCase, stores: ProjectionStores | None = None) -> CaseShared:
    """The shared part of `case`'s seeds; `stores` (the projection's databases) when the caller
    has them, else made here when the case has a SQLite projection."""
    if stores is None and case.projection is not None:
        stores = ProjectionStores()
    handlers = {name: simulated_handler(h) for name, h in case.worker.handlers.items()}
    return CaseShared(handlers=handlers, stores=stores)
