"""A workflow's `cancel_on`: external events that cancel a run.

`cancel_on` is one object `{"event": NAME, "match": CONDITION}` or an array of up to
`limits.cancel_on_max` of them; `match` is optional and uses the grammar of `kernel.conditions`
(the same as a `wait_for_event` step's). An event of a listed name published at or after the
run started, whose payload meets the condition, cancels the run through the ordinary cancel path
(compensations run); any other event changes nothing. The run watches its names from its start
(`react` on `run.started`) and again after a restart (`resume`). Pure: no I/O.
"""

from __future__ import annotations

import re
from typing import Final

import msgspec

from kernel import limits
from kernel.commands import DeliverEvent
from kernel.conditions import condition_holds, condition_problems
from kernel.effects import WatchEvents
from kernel.state import RunState
from kernel.workflow import CancelOn
from kernel.workflow_fields import MISSING, Problems, canonical_json, read_object

CANCEL_ON_FIELDS: Final = ("event", "match")
NO_MATCH: Final = msgspec.Raw(b"null")  # a cancel_on without `match`: any payload
EVENT_NAME: Final = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*")


def read_cancel_on(value: object, problems: Problems) -> tuple[CancelOn, ...]:
    """The `cancel_on` of a workflow document (one object or an array), adding each problem."""
    if value is MISSING or value is None:
        return ()
    if not isinstance(value, list | tuple):
        item = _item(value, "cancel_on", problems)
        return (item,) if item is not None else ()
    if len(value) > limits.cancel_on_max:
        rule = f"holds {len(value)} conditions; the limit is {limits.cancel_on_max} (cancel_on_max)"
        problems.add_shown("cancel_on", f"[... {len(value)} items]", rule)
        return ()
    items = (_item(raw, f"cancel_on[{index}]", problems) for index, raw in enumerate(value))
    return tuple(item for item in items if item is not None)


def _item(value: object, path: str, problems: Problems) -> CancelOn | None:
    if not isinstance(value, dict):
        rule = 'must be an object {"event": name, "match": {"left", "op", "right"}}'
        problems.add(path, value, rule)
        return None
    fields = read_object(value, path, CANCEL_ON_FIELDS, problems)
    assert fields is not None
    name = fields.get("event", MISSING)
    bound = limits.event_name_length_max
    if not isinstance(name, str) or len(name) > bound or EVENT_NAME.fullmatch(name) is None:
        rule = f"is required: an event name, 1..{bound} of A-Z a-z 0-9 '_' '-' ('.' between)"
        problems.add(f"{path}.event", name, rule)
        name = ""
    match = fields.get("match")
    encoded = None
    if match is not None:
        found = condition_problems(match, f"{path}.match")
        problems.extend(found)
        if not found:
            encoded = canonical_json(match, f"{path}.match", problems)
    return CancelOn(event=name, match=encoded or NO_MATCH)


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
