"""The `wait_signal` step type: waits for a named signal sent to its run; no worker.

Config: `signal`, the name to wait for. Signals are events in the run's history, in arrival
order (`signal.received`); one sent before the step started waits for it there. The step
consumes the first unconsumed signal of its name and completes with its payload. A `timeout` on
the step bounds the wait like any attempt.

decide: start schedules the attempt and consumes a waiting signal if there is one; a signal
arriving later is offered to the active steps in order, and the first waiting step takes it.
evolve: `signal.consumed` marks the signal taken by the step.
react / resume: nothing (no timer, no task).
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from kernel import limits, registry
from kernel.commands import Rejection
from kernel.errors import Problem, show_value
from kernel.events import SignalConsumed, StepEvent
from kernel.outcome import SignalArrived, StartAttempt, StepInput
from kernel.state import RunState
from kernel.workflow import StepDef
from steps.base import Draft, StepTypeBase, config_of, schedule_attempt

CONFIG_FIELDS = ("signal",)


class WaitSignalConfig(msgspec.Struct, frozen=True, kw_only=True):
    """The signal name to wait for (1..`limits.signal_name_length_max` characters)."""

    signal: Annotated[str, msgspec.Meta(min_length=1, max_length=limits.signal_name_length_max)]


def signal_name(step: StepDef) -> str | Problem:
    """The signal a step waits for, or the problem with its config."""
    document = msgspec.json.decode(bytes(step.config))
    assert isinstance(document, dict)
    unknown = [key for key in document if key not in CONFIG_FIELDS]
    if unknown:
        return Problem(
            path=f"config.{unknown[0]}",
            value=show_value(document[unknown[0]]),
            rule=f"unknown field (allowed: {', '.join(CONFIG_FIELDS)})",
        )
    name = document.get("signal")
    if not isinstance(name, str) or not name or len(name) > limits.signal_name_length_max:
        bound = limits.signal_name_length_max
        rule = f"is required: the name of the signal to wait for (1..{bound} characters)"
        return Problem(path="config.signal", value=show_value(name), rule=rule)
    return name


class WaitSignalStep(StepTypeBase):
    """Complete with the payload of the first signal of a name."""

    name = "wait_signal"
    needs_task = False
    config_fields = CONFIG_FIELDS

    def validate(self, step: StepDef, path: str) -> tuple[Problem, ...]:
        name = signal_name(step)
        if isinstance(name, Problem):
            return (msgspec.structs.replace(name, path=f"{path}.{name.path}"),)
        return ()

    def read_config(self, step: StepDef) -> WaitSignalConfig:
        name = signal_name(step)
        assert isinstance(name, str), "validated at registration"
        return WaitSignalConfig(signal=name)

    # decide
    def on(self, draft: Draft, step_id: str, given: StepInput) -> Rejection | None:
        wanted = config_of(draft.state, step_id, WaitSignalConfig).signal
        match given:
            case StartAttempt():
                draft.emit(
                    schedule_attempt(draft.state, step_id, given.attempt, given.input, draft.at_ms)
                )
                for index, signal in enumerate(draft.state.signals):
                    if signal.consumed_by is None and signal.name == wanted:
                        _consume(draft, step_id, index)
                        return None
            case SignalArrived():
                signal = draft.state.signals[given.index]
                if signal.consumed_by is None and signal.name == wanted:
                    _consume(draft, step_id, given.index)
        return None

    # evolve
    def evolve(self, state: RunState, event: StepEvent) -> RunState:
        assert isinstance(event, SignalConsumed), type(event).__name__
        signal = state.signals[event.signal_index]
        assert signal.consumed_by is None, f"signal {event.signal_index} consumed twice"
        taken = msgspec.structs.replace(signal, consumed_by=event.step_id)
        index = event.signal_index
        signals = (*state.signals[:index], taken, *state.signals[index + 1 :])
        return msgspec.structs.replace(state, signals=signals, event_count=state.event_count + 1)


def _consume(draft: Draft, step_id: str, index: int) -> None:
    payload = draft.state.signals[index].payload
    draft.emit(SignalConsumed(step_id=step_id, signal_index=index, at_ms=draft.at_ms))
    draft.complete(step_id, payload)


WAIT_SIGNAL = registry.register(WaitSignalStep())
