"""The `log` step type: records a message in the run's history and passes its input on.

Config: `message` (required, 1..`limits.log_message_bytes_max` bytes) and `level` (`info`,
`warning` or `error`; default `info`). No worker: the step is decided by the engine alone.
The message is part of the run's history (`log.recorded`), so `dagnats history`, the audit and
every projection see it; the step's output is its input, so `a -> log -> b` hands `a`'s
output to `b`.

decide: an attempt schedules itself, records `log.recorded`, and completes with its input.
evolve: `log.recorded` changes no state (the record is the history itself).
react / resume: nothing (no task, no timer).
"""

from __future__ import annotations

from typing import Annotated, Final, Literal

import msgspec

from kernel import limits, registry
from kernel.commands import Rejection
from kernel.errors import Problem
from kernel.events import LogRecorded, StepEvent
from kernel.outcome import StartAttempt, StepInput
from kernel.state import RunState
from kernel.workflow import StepDef
from steps.base import ConfiguredStepType, Draft, config_of, counted, schedule_attempt
from steps.config_read import config_document, unknown_fields

LogLevel = Literal["info", "warning", "error"]
LEVELS: Final[tuple[LogLevel, ...]] = ("info", "warning", "error")
CONFIG_FIELDS: Final = ("message", "level")


class LogConfig(msgspec.Struct, frozen=True, kw_only=True):
    """What a log step records."""

    message: Annotated[str, msgspec.Meta(min_length=1, max_length=limits.log_message_bytes_max)]
    level: LogLevel = "info"


def read_config(step: StepDef, path: str) -> LogConfig | tuple[Problem, ...]:
    """The step's config, or every problem with it."""
    document = config_document(step)
    problems: list[Problem] = []
    unknown_fields(document, CONFIG_FIELDS, path, problems)
    message = document.get("message")
    bound = limits.log_message_bytes_max
    if not isinstance(message, str) or not message or len(message.encode()) > bound:
        rule = f"is required: the text to record (1..{bound} bytes)"
        shown = repr(message)[:80]
        problems.append(Problem(path=f"{path}.config.message", value=shown, rule=rule))
    level = document.get("level", "info")
    if level not in LEVELS:
        rule = f"must be one of {', '.join(LEVELS)}"
        problems.append(Problem(path=f"{path}.config.level", value=repr(level)[:80], rule=rule))
    if problems:
        return tuple(problems)
    assert isinstance(message, str) and level in LEVELS
    return LogConfig(message=message, level=level)


class LogStep(ConfiguredStepType[LogConfig]):
    """Record a message in the run's history, then pass the input on."""

    config_type = LogConfig
    config_fields = CONFIG_FIELDS
    read = staticmethod(read_config)
    name = "log"
    needs_task = False

    # decide
    def on(self, draft: Draft, step_id: str, given: StepInput) -> Rejection | None:
        if not isinstance(given, StartAttempt):
            return None  # (no worker, no timer, no signal: nothing else concerns it)
        config = config_of(draft.state, step_id, LogConfig)
        draft.emit(schedule_attempt(draft.state, step_id, given.attempt, given.input, draft.at_ms))
        draft.emit(
            LogRecorded(
                step_id=step_id,
                attempt=given.attempt,
                level=config.level,
                message=config.message,
                at_ms=draft.at_ms,
            )
        )
        draft.complete(step_id, given.input)
        return None

    # evolve
    def evolve(self, state: RunState, event: StepEvent) -> RunState:
        assert isinstance(event, LogRecorded), f"log owns no event {type(event).__name__}"
        assert state.step(event.step_id) is not None, f"no step {event.step_id!r}"
        return counted(state)


LOG = registry.register(LogStep())
