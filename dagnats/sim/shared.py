"""What the seeds of one `run_seeds` call share: set up once per case, never part of an outcome.

A seed's world is its own (its log, queues, processes, dice); what is shared here is what
depends on the case alone and that no seed can change in a way another one could see:
- the user's handlers wrapped for the simulator (`processes.simulated_handler`: stateless
  wrappers that read the current call from a context variable);
- the projection's two in-memory databases, each seed restoring them as a first open left them
  (`stores.ProjectionStores.fresh`);
- the engines' memo of workflow definitions found valid (`Engine._valid_workflows`, keyed by
  the definition's bytes): each engine incarnation of each seed validated the case's one
  workflow again (~2% of a seed of the order example), with the same result every time
  (`validate_workflow` is a pure function of those bytes). An invalid workflow is never
  memoized, so a case that starts one is still refused by every engine. The first engine's
  memo is given to the later ones, whatever its type (a dict of digests, or an object that
  keeps them), as long as theirs is of the same type and still empty.

This module may not read the wall clock, draw randomness or do I/O.
"""

from __future__ import annotations

from collections.abc import Sized
from dataclasses import dataclass
from typing import Final

from dagnats.sim.case import SimCase
from dagnats.sim.processes import simulated_handler
from dagnats.sim.stores import ProjectionStores
from dagnats.worker import Handler

ENGINE_VALID_WORKFLOWS: Final = "_valid_workflows"  # the engine's memo (dagnats/runtime/engine.py)


@dataclass(eq=False)
class CaseShared:
    """What every seed of one call of one case reuses (see the module)."""

    handlers: dict[str, Handler]
    stores: ProjectionStores | None
    valid_workflows: Sized | None = None  # the first engine's memo, then every engine's

    def share_with(self, engine: object) -> None:
        """Give a new engine the call's memo of valid workflows instead of its own empty one
        (an engine without such a memo, or with one of another type, is left as it is)."""
        memo = getattr(engine, ENGINE_VALID_WORKFLOWS, None)
        if not isinstance(memo, Sized) or len(memo):
            return
        if self.valid_workflows is None:
            self.valid_workflows = memo
        elif type(memo) is type(self.valid_workflows):
            setattr(engine, ENGINE_VALID_WORKFLOWS, self.valid_workflows)


def case_shared(case: SimCase, stores: ProjectionStores | None = None) -> CaseShared:
    """The shared part of `case`'s seeds; `stores` (the projection's databases) when the caller
    has them, else made here when the case has a SQLite projection."""
    if stores is None and case.projection is not None:
        stores = ProjectionStores()
    handlers = {name: simulated_handler(h) for name, h in case.worker.handlers.items()}
    return CaseShared(handlers=handlers, stores=stores)
