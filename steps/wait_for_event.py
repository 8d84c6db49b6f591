"""The `wait_for_event` step type: waits for an external event by name; no worker.

Config: `event` (the name, as published with `Client.publish_event` or `dagnats event publish`),
optional `match` (`{"left": path in the event payload, "op": eq|ne|lt|gt|le|ge|in|exists,
"right": "input.<path>" | "step.<id>.output.<path>" | a literal}`) and `since` (`step_start`,
the default: an event published before the step started is not taken; or `run_start`). The
step completes with the event's payload. A step `timeout` does not fail the step: it completes
with `{"timeout": true}`.

decide: start schedules the attempt (without the kernel's deadline) and, with a timeout, starts
the step's own timer; a delivered event of the name, recent enough and matching, is taken
(`event.received`) and completes the step; the timer's firing completes it with the timeout
output.
evolve: `timer.started` sets the step's wake-up; `timer.fired` and `event.received` clear it.
react: a scheduled attempt asks the shell to route the name's events to the run (from the step's
or the run's start); `timer.started` arms the timer; `event.received` disarms it.
resume: the same watch and timer again (events published meanwhile are delivered then).
"""

from __future__ import annotations

import re
from typing import Annotated

import msgspec

from kernel import limits, registry
from kernel.commands import DeliverEvent, FireTimer, Rejection
from kernel.conditions import CONDITION_OPS, condition_holds, condition_problems
from kernel.effects import AnyEffect, CancelTimer, WatchEvents
from kernel.errors import Problem, show_value
from kernel.events import (
    AnyEvent,
    EventReceived,
    StepEvent,
    StepScheduled,
    TimerFired,
    TimerStarted,
)
from kernel.outcome import StartAttempt, StepInput
from kernel.payloads import encode
from kernel.state import RunState
from kernel.timers import step_timer_id
from kernel.workflow import StepDef
from steps.base import (
    ConfiguredStepType,
    Draft,
    config_of,
    schedule_attempt,
    set_wake,
    step_timer,
    woke,
)

CONFIG_FIELDS = ("event", "match", "since")
SINCE_VALUES = ("step_start", "run_start")
EVENT_NAME = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*")
TIMEOUT_OUTPUT = encode({"timeout": True})


class WaitForEventConfig(msgspec.Struct, frozen=True, kw_only=True):
    event: Annotated[str, msgspec.Meta(min_length=1, max_length=limits.event_name_length_max)]
    match: dict[str, object] | None = None
    since: str = "step_start"


def read_config(step: StepDef, path: str) -> WaitForEventConfig | tuple[Problem, ...]:
    """The step's config, or every problem with it (paths like `steps[3].config.event`)."""
    document = msgspec.json.decode(bytes(step.config))
    assert isinstance(document, dict)
    problems = [
        Problem(
            path=f"{path}.config.{key}",
            value=show_value(document[key]),
            rule=f"unknown field (allowed: {', '.join(CONFIG_FIELDS)})",
        )
        for key in document
        if key not in CONFIG_FIELDS
    ]
    name = document.get("event")
    bound = limits.event_name_length_max
    if not isinstance(name, str) or len(name) > bound or EVENT_NAME.fullmatch(name) is None:
        rule = f"is required: an event name, 1..{bound} of A-Z a-z 0-9 '_' '-' ('.' between)"
        problems.append(Problem(path=f"{path}.config.event", value=show_value(name), rule=rule))
    match = document.get("match")
    if match is not None:
        problems.extend(condition_problems(match, f"{path}.config.match"))
    since = document.get("since", "step_start")
    if since not in SINCE_VALUES:
        rule = f"must be one of {', '.join(SINCE_VALUES)}"
        problems.append(Problem(path=f"{path}.config.since", value=show_value(since), rule=rule))
    if problems:
        return tuple(problems)
    assert isinstance(name, str) and isinstance(since, str)
    return WaitForEventConfig(
        event=name, match=match if isinstance(match, dict) else None, since=since
    )


def _config(state: RunState, step_id: str) -> WaitForEventConfig:
    return config_of(state, step_id, WaitForEventConfig)


class WaitForEventStep(ConfiguredStepType[WaitForEventConfig]):
    """Complete with the first matching external event of a name (or a timeout marker)."""

    config_type = WaitForEventConfig
    config_fields = CONFIG_FIELDS
    read = staticmethod(read_config)
    name = "wait_for_event"
    needs_task = False

    # decide
    def on(self, draft: Draft, step_id: str, given: StepInput) -> Rejection | None:
        match given:
            case StartAttempt():
                _start(draft, step_id, given)
            case DeliverEvent():
                _offered(draft, step_id, given)
            case FireTimer():
                woke(draft, step_id, given, TIMEOUT_OUTPUT)
        return None

    # evolve
    def evolve(self, state: RunState, event: StepEvent) -> RunState:
        match event:
            case TimerStarted():
                return set_wake(state, event.step_id, event.fire_at_ms)
            case TimerFired() | EventReceived():
                return set_wake(state, event.step_id, None)
        raise AssertionError(f"wait_for_event owns no event {type(event).__name__}")

    # react
    def react(self, state: RunState, event: AnyEvent) -> tuple[AnyEffect, ...]:
        match event:
            case StepScheduled():
                return (_watch(state, event.step_id),)
            case TimerStarted():
                timer = step_timer(state, event.step_id)
                return (timer,) if timer is not None else ()
            case EventReceived():
                step = state.step(event.step_id)
                step_def = state.step_def(event.step_id)
                assert step is not None and step_def is not None
                if step_def.timeout_ms is None:
                    return ()
                timer_id = step_timer_id(event.step_id, step.attempt)
                return (CancelTimer(run_id=state.run_id, timer_id=timer_id),)
        return ()

    # resume
    def resume(self, state: RunState, step_id: str) -> tuple[AnyEffect, ...]:
        timer = step_timer(state, step_id)
        return (_watch(state, step_id),) + ((timer,) if timer is not None else ())


def _start(draft: Draft, step_id: str, given: StartAttempt) -> None:
    state = draft.state
    scheduled = schedule_attempt(state, step_id, given.attempt, given.input, draft.at_ms)
    # the timeout completes the step (its own timer) instead of failing the attempt
    draft.emit(msgspec.structs.replace(scheduled, deadline_ms=None))
    step_def = state.step_def(step_id)
    assert step_def is not None
    if step_def.timeout_ms is not None:
        draft.emit(
            TimerStarted(
                step_id=step_id,
                timer_id=step_timer_id(step_id, given.attempt),
                fire_at_ms=draft.at_ms + step_def.timeout_ms,
                at_ms=draft.at_ms,
            )
        )


def _offered(draft: Draft, step_id: str, command: DeliverEvent) -> None:
    state = draft.state
    config = _config(state, step_id)
    if command.name != config.event or command.at_ms < _since_ms(state, step_id, config):
        return
    if config.match is not None and not condition_holds(config.match, command.payload, state):
        return
    draft.emit(
        EventReceived(
            step_id=step_id,
            name=command.name,
            event_seq=command.event_seq,
            payload=command.payload,
            at_ms=draft.at_ms,
        )
    )
    draft.complete(step_id, command.payload)


def _since_ms(state: RunState, step_id: str, config: WaitForEventConfig) -> int:
    if config.since == "run_start":
        return state.started_at_ms
    step = state.step(step_id)
    assert step is not None and step.first_scheduled_at_ms is not None
    return step.first_scheduled_at_ms


def _watch(state: RunState, step_id: str) -> WatchEvents:
    config = _config(state, step_id)
    since = _since_ms(state, step_id, config)
    return WatchEvents(run_id=state.run_id, names=(config.event,), since_ms=since)


assert set(CONDITION_OPS) >= {"eq", "exists"}
WAIT_FOR_EVENT = registry.register(WaitForEventStep())
