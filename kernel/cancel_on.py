"""A workflow's `cancel_on`: external events that cancel a run.

`cancel_on` is one object `{"event": NAME, "match": CONDITION}` or an array of up to
`limits.cancel_on_max` of them; `match` is optional and uses the grammar of `kernel.conditions`
(the same as a `wait_for_event` step's). An event of a listed name published at or after the
run started, whose payload meets the condition, cancels the run through the ordinary cancel path
(compensations run); any other event changes nothing. The run watches its names from its start
(`react` on `run.started`) and again after a restart (`resume`). Reading and checking a
workflow's `cancel_on` is the workflow format's (`kernel.workflow.parse` and `rules`); this
module is the run behaviour. Pure: no I/O.
"""

from __future__ import annotations

import msgspec

from kernel.commands import DeliverEvent
from kernel.conditions import condition_holds
from kernel.effects import WatchEvents
from kernel.state import RunState
from kernel.workflow.model import NO_MATCH


def cancel_reason(state: RunState, command: DeliverEvent) -> str | None:
    """Why the event cancels the run (a reason naming it), or None when it does not."""
    assert state.workflow is not None
    if command.at_ms < state.started_at_ms:
        return None  # published before the run started
    for item in state.workflow.cancel_on:
        if item.event != command.name:
            continue
        if bytes(item.match) != bytes(NO_MATCH):
            condition = msgspec.json.decode(bytes(item.match))
            assert isinstance(condition, dict), "validated at registration"
            if not condition_holds(condition, command.payload, state):
                continue
        return f"cancel_on event {command.name!r} (event {command.event_seq})"
    return None


def watch(state: RunState) -> tuple[WatchEvents, ...]:
    """The effect that routes the run's cancel_on events to it, from its start (or nothing)."""
    assert state.workflow is not None
    names = tuple(dict.fromkeys(item.event for item in state.workflow.cancel_on))
    if not names or state.status != "running":
        return ()
    return (WatchEvents(run_id=state.run_id, names=names, since_ms=state.started_at_ms),)
