"""The `sleep` step type: a durable delay with no worker.

Config: exactly one of `duration` (`"30s"`, or integer nanoseconds as in workflow files),
`cron` (a 5-field expression in UTC, see `steps.cron`: the step wakes at its next fire time
after the step starts) or `until_input_path` (a dotted path into the run input holding an
RFC 3339 time or epoch milliseconds). Every wake-up is at most `sleep_ms_max` away. The step's
output is its input, so `a -> sleep -> b` hands `a`'s output to `b`.

decide: start schedules the attempt and starts a timer (`timer.started`); its firing
(`timer.fired`) completes the step. A wake-up time in the past fires at once, once.
evolve: `timer.started` sets the step's `wake_at_ms`; `timer.fired` clears it.
react: `timer.started` arms the durable timer.
resume: a sleeping step's timer is armed again (it fires at once if it came due meanwhile).
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from kernel import limits, registry
from kernel.commands import FireTimer, Rejection
from kernel.effects import AnyEffect
from kernel.errors import Problem, show_value
from kernel.events import AnyEvent, ErrorInfo, StepEvent, TimerFired, TimerStarted
from kernel.outcome import StartAttempt, StepInput
from kernel.payloads import read_field
from kernel.state import RunState
from kernel.timers import step_timer_id
from kernel.workflow import StepDef
from kernel.workflow.durations import parse_duration
from steps.base import (
    ConfiguredStepType,
    Draft,
    config_of,
    schedule_attempt,
    set_wake,
    step_timer,
    woke,
)
from steps.cron import next_fire_ms, parse_cron
from steps.timestamps import parse_timestamp_ms

CONFIG_FIELDS = ("duration", "cron", "until_input_path")


class SleepConfig(msgspec.Struct, frozen=True, kw_only=True):
    duration_ms: Annotated[int, msgspec.Meta(ge=0, le=limits.sleep_ms_max)] | None = None
    cron: Annotated[str, msgspec.Meta(min_length=9)] | None = None  # 5 fields
    until_input_path: Annotated[str, msgspec.Meta(min_length=1)] | None = None


def read_config(step: StepDef, path: str) -> SleepConfig | tuple[Problem, ...]:
    """The sleep's config, or every problem with it."""
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
    given = [key for key in CONFIG_FIELDS if document.get(key) is not None]
    if len(given) != 1:
        rule = "a sleep needs exactly one of duration, cron, until_input_path"
        problems.append(Problem(path=f"{path}.config", value=show_value(document), rule=rule))
        return tuple(problems)
    if given == ["duration"]:
        parsed = parse_duration(document["duration"], f"{path}.config.duration")
        if isinstance(parsed, Problem):
            return (*problems, parsed)
        if parsed > limits.sleep_ms_max:
            rule = f"must be at most {limits.sleep_ms_max} ms (sleep_ms_max)"
            problems.append(Problem(path=f"{path}.config.duration", value=str(parsed), rule=rule))
        return tuple(problems) or SleepConfig(duration_ms=parsed)
    if given == ["cron"]:
        schedule = parse_cron(document["cron"])
        if isinstance(schedule, str):
            value = show_value(document["cron"])
            problems.append(Problem(path=f"{path}.config.cron", value=value, rule=schedule))
        return tuple(problems) or SleepConfig(cron=str(document["cron"]))
    field = document["until_input_path"]
    if not isinstance(field, str) or not field:
        rule = "must be a dotted path into the run input, e.g. 'deadline'"
        problems.append(
            Problem(path=f"{path}.config.until_input_path", value=show_value(field), rule=rule)
        )
    return tuple(problems) or SleepConfig(until_input_path=str(field))


class SleepStep(ConfiguredStepType[SleepConfig]):
    """Wait durably until a time, then pass the input on."""

    config_type = SleepConfig
    config_fields = CONFIG_FIELDS
    read = staticmethod(read_config)
    name = "sleep"
    needs_task = False

    # decide
    def on(self, draft: Draft, step_id: str, given: StepInput) -> Rejection | None:
        match given:
            case StartAttempt():
                _start(draft, step_id, given)
            case FireTimer():
                woke(draft, step_id, given, None)  # the output is the input
        return None

    # evolve
    def evolve(self, state: RunState, event: StepEvent) -> RunState:
        match event:
            case TimerStarted():
                return set_wake(state, event.step_id, event.fire_at_ms)
            case TimerFired():
                return set_wake(state, event.step_id, None)
        raise AssertionError(f"sleep owns no event {type(event).__name__}")

    # react
    def react(self, state: RunState, event: AnyEvent) -> tuple[AnyEffect, ...]:
        if isinstance(event, TimerStarted):
            timer = step_timer(state, event.step_id)
            assert timer is not None
            return (timer,)
        return ()

    # resume
    def resume(self, state: RunState, step_id: str) -> tuple[AnyEffect, ...]:
        timer = step_timer(state, step_id)
        return (timer,) if timer is not None else ()


def _start(draft: Draft, step_id: str, given: StartAttempt) -> None:
    state = draft.state
    config = config_of(state, step_id, SleepConfig)
    draft.emit(schedule_attempt(state, step_id, given.attempt, given.input, draft.at_ms))
    wake = _wake_at(state, config, draft.at_ms)
    if isinstance(wake, str):
        draft.fail(step_id, ErrorInfo(message=wake, kind="non_retryable"), retryable=False)
        return
    timer_id = step_timer_id(step_id, given.attempt)
    draft.emit(TimerStarted(step_id=step_id, timer_id=timer_id, fire_at_ms=wake, at_ms=draft.at_ms))


def _wake_at(state: RunState, config: SleepConfig, at_ms: int) -> int | str:
    """When to wake, or why that cannot be known (a message for the step's failure)."""
    if config.duration_ms is not None:
        return at_ms + config.duration_ms
    if config.cron is not None:
        schedule = parse_cron(config.cron)
        assert not isinstance(schedule, str), "validated at registration"
        fire = next_fire_ms(schedule, at_ms, limits.sleep_ms_max)
        if fire is None:
            bound = limits.sleep_ms_max
            return f"cron {config.cron!r} does not fire within sleep_ms_max ({bound} ms)"
        return fire
    assert config.until_input_path is not None
    value = read_field(state.input, config.until_input_path)
    wake = parse_timestamp_ms(value)
    if wake is None:
        return (
            f"run input field {config.until_input_path!r} is {show_value(value)}: "
            "expected an RFC 3339 time or epoch milliseconds"
        )
    if wake - at_ms > limits.sleep_ms_max:
        return f"wake-up time {wake} is more than sleep_ms_max ({limits.sleep_ms_max} ms) away"
    return wake


SLEEP = registry.register(SleepStep())
