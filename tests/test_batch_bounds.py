"""The bounds of one batch (kernel/batch.py `decide_in_turn`, runtime/batched.py `_fit`).

A 70-branch fan-out's 70 results: the first batch keeps exactly `commands_per_decision_max`
(64) of them, the remaining 6 go in the next. A batch stops before `events_per_decision_max`
events. A history message over `history_message_bytes_max` bytes is halved until it fits,
and left to the per-command path when only one command would be in it.
"""

from __future__ import annotations

import msgspec
import pytest

from dagnats.runtime import batched
from dagnats.runtime.protocols import CommandMessage
from kernel import batch as kernel_batch
from kernel.batch import Decided, decide_in_turn, kept
from kernel.commands import AnyCommand, Rejection
from kernel.limits import commands_per_decision_max
from kernel.reducer import evolve
from kernel.state import RunState
from tests.kernel_dsl import complete, given, start, task, workflow

BRANCHES = 70


def fan_out(branches: int) -> RunState:
    steps = [task(f"p{index}") for index in range(branches)]
    join = task("join", *(f"p{index}" for index in range(branches)))
    return given(start(workflow(*steps, join, name="wide"), {"n": branches})).state


def results(branches: int) -> list[AnyCommand]:
    return [complete(f"p{i}", {"i": i}, at_ms=2_000 + i) for i in range(branches)]


def folded(state: RunState, commands: list[AnyCommand]) -> RunState:
    for event in kept(commands, decide_in_turn(state, commands))[1]:
        state = evolve(state, event)
    return state


def test_seventy_results_go_as_sixty_four_then_six() -> None:
    assert commands_per_decision_max == 64
    state, commands = fan_out(BRANCHES), results(BRANCHES)
    first = decide_in_turn(state, commands)
    assert len(first) == commands_per_decision_max
    assert kept(commands, first)[0] == tuple(commands[:64])
    rest = commands[len(first) :]
    second = decide_in_turn(folded(state, commands[:64]), rest)
    assert len(second) == 6 and kept(rest, second)[0] == tuple(commands[64:])


def test_a_batch_stops_before_the_events_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    state, commands = fan_out(8), results(8)
    first = decide_in_turn(state, commands[:1])[0]
    assert not isinstance(first, Rejection) and len(first) == 1  # (a StepCompleted, no join)
    monkeypatch.setattr(kernel_batch, "events_per_decision_max", 3)
    decisions = decide_in_turn(state, commands)
    assert len(decisions) == 3, "three results of one event each, the fourth would break it"
    monkeypatch.setattr(kernel_batch, "events_per_decision_max", 0)
    assert len(decide_in_turn(state, commands)) == 1, "one command always fits"


def fit(commands: list[AnyCommand], decisions: list[Decided]) -> tuple[int, int, bytes]:
    message = [(_no_message(), command) for command in commands]
    fitted, kept_commands, _, payload = batched._fit(message, decisions)
    return len(fitted), len(kept_commands), payload


def _no_message() -> CommandMessage:
    return None  # type: ignore[return-value]  # (`_fit` reads only the commands)


def test_a_message_over_the_byte_bound_is_halved_until_it_fits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    state, commands = fan_out(8), results(8)
    decisions = decide_in_turn(state, commands)
    whole = fit(commands, decisions)
    assert whole[:2] == (8, 8)
    monkeypatch.setattr(batched, "history_message_bytes_max", len(whole[2]) - 1)
    taken, kept_count, payload = fit(commands, decisions)
    assert (taken, kept_count) == (4, 4) and len(payload) < len(whole[2])
    stored = msgspec.json.decode(payload)["command"]
    assert stored["type"] == "decide_all" and len(stored["commands"]) == 4


def test_only_one_command_fitting_leaves_the_batch_to_the_per_command_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    state, commands = fan_out(8), results(8)
    monkeypatch.setattr(batched, "history_message_bytes_max", 10)
    taken, kept_count, _ = fit(commands, decide_in_turn(state, commands))
    assert (taken, kept_count) == (1, 1), "fewer than two kept: `_batch` hands them back"
