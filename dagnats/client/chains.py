"""The client side of continue-as-new: follow a chain of runs, and show its lineage.

`Client.wait(follow=True)` and `Client.lineage` call these. A run that ended as
`continued_as_new` names the run it continued as; waiting follows those links (the next run
may not have started yet: its first history message is awaited) within one overall timeout.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import msgspec

from dagnats.client.errors import RunNotFoundError, WaitTimeoutError
from kernel import limits
from kernel.events import Decision
from kernel.reducer import evolve
from kernel.state import INITIAL_STATE, RunState, is_terminal
from steps import continuation

if TYPE_CHECKING:
    from dagnats.client.core import Client

lineage_shown_max = 1_000


class ChainLink(msgspec.Struct, frozen=True, kw_only=True):
    """One run of a continue-as-new chain."""

    run_id: str
    chain_index: int
    status: str
    workflow: str
    event_count: int


async def follow(
    client: Client,
    state: RunState,
    *,
    timeout_s: float,
    on_update: Callable[[RunState, Decision], None] | None,
) -> RunState:
    """From a run's final state, wait along its `continued_as` links to the chain's end.

    Raises:
        WaitTimeoutError: the chain did not end within `timeout_s`.
    """
    deadline = time.monotonic() + timeout_s
    for _ in range(limits.continue_as_new_chain_max + 1):
        if state.status != "continued_as_new" or state.continued_as is None:
            return state
        run_id = state.continued_as
        state = INITIAL_STATE
        left = deadline - time.monotonic()
        decisions = client.watch(run_id, timeout_s=max(left, 0.0))
        async with contextlib.aclosing(decisions):
            async for _, decision in decisions:
                for event in decision.events:
                    state = evolve(state, event)
                if on_update is not None:
                    on_update(state, decision)
                if is_terminal(state):
                    break
        if not is_terminal(state):
            raise WaitTimeoutError(run_id, timeout_s, state)
    return state


async def lineage(client: Client, run_id: str) -> list[ChainLink]:
    """The chain a run belongs to, from its root to its latest run, in order."""
    state = await client.get_run(run_id)
    backward: list[RunState] = []
    current = state
    while current.continued_from is not None and len(backward) < lineage_shown_max:
        try:
            current = await client.get_run(current.continued_from)
        except RunNotFoundError:
            break
        backward.append(current)
    forward: list[RunState] = []
    current = state
    while current.continued_as is not None and len(forward) < lineage_shown_max:
        try:
            current = await client.get_run(current.continued_as)
        except RunNotFoundError:
            break
        forward.append(current)
    chain = [*reversed(backward), state, *forward]
    return [
        ChainLink(
            run_id=s.run_id,
            chain_index=s.chain_index,
            status=s.status,
            workflow=s.workflow.name if s.workflow is not None else "",
            event_count=s.event_count,
        )
        for s in chain
    ]


def history_warning(state: RunState) -> str:
    """A warning when the run's history passed the soft size limit, else ""."""
    if not continuation.should_continue_as_new(state):
        return ""
    return (
        f"history holds {state.event_count} events (soft limit "
        f"{limits.history_events_soft_max}): consider a continue_as_new step"
    )
