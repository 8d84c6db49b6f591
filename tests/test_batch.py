"""The batch command (kernel/batch.py): several commands of one run as one history message.

- Deciding a fan-out's results in turn and recording the ones that decided events as one
  DecideAll gives the same events and the same state as recording them one by one (any order,
  duplicates and stale attempts among them), and re-deciding the stored DecideAll gives exactly
  its events (what the auditor and `dagnats.testing.replay` do).
- A redelivered command is recognised inside the DecideAll that holds it.
- The codec: a DecideAll round-trips; it never arrives as a command; the events-only decoder
  gives the events `decode_decision` gives (golden files, old versions upcast).
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

import pytest
from hypothesis import given as hypothesis_given
from hypothesis import settings
from hypothesis import strategies as st

from dagnats.audit import audit_history
from dagnats.cli.render import _command_label, batch_commands_shown_max
from kernel import codec
from kernel.batch import batch_command, commands_of, decide_in_turn, decide_stored, holds, kept
from kernel.commands import AnyCommand, DecideAll, Rejection
from kernel.errors import DecodeError
from kernel.events import AnyEvent
from kernel.limits import commands_per_decision_max
from kernel.reducer import evolve
from kernel.state import RunState
from tests.kernel_dsl import complete, fail, given, retry, start, task, workflow

HISTORIES: Final = Path(__file__).parent / "histories"
BRANCHES_MAX: Final = 12


def fan_out(branches: int) -> RunState:
    steps = [task(f"p{index}", retry=retry(3)) for index in range(branches)]
    join = task("join", *(f"p{index}" for index in range(branches)))
    return given(start(workflow(*steps, join, name="fan_out"), {"n": branches})).state


@st.composite
def results(draw: st.DrawFn) -> tuple[int, tuple[AnyCommand, ...]]:
    """A fan-out's size and a row of its results: completions and failures in any order,
    some twice, some of attempts that never ran."""
    branches = draw(st.integers(2, BRANCHES_MAX))
    commands: list[AnyCommand] = []
    for index in draw(st.lists(st.integers(0, branches - 1), min_size=1, max_size=30)):
        step_id, attempt = f"p{index}", draw(st.sampled_from((1, 1, 1, 2)))
        at_ms = 2_000 + len(commands)
        if draw(st.booleans()):
            commands.append(complete(step_id, {"i": index}, attempt=attempt, at_ms=at_ms))
        else:
            commands.append(fail(step_id, "flaky", attempt=attempt, seed=index, at_ms=at_ms))
    return branches, tuple(commands)


def one_by_one(
    state: RunState, commands: tuple[AnyCommand, ...]
) -> tuple[list[tuple[AnyCommand, tuple[AnyEvent, ...]]], RunState]:
    """Each command decided and folded before the next (the per-command path): the oracle
    `decide_in_turn` (kernel/batch.py) is checked against."""
    decisions = []
    for command in commands:
        decided = decide_stored(state, command)
        if isinstance(decided, Rejection) or not decided:
            continue
        for event in decided:
            state = evolve(state, event)
        decisions.append((command, decided))
    return decisions, state


@settings(max_examples=150, deadline=None)
@hypothesis_given(results())
def test_results_decided_together_equal_results_decided_one_by_one(
    row: tuple[int, tuple[AnyCommand, ...]],
) -> None:
    branches, commands = row
    before = fan_out(branches)
    decisions, after = one_by_one(before, commands)  # (the oracle)
    in_turn = decide_in_turn(before, commands)  # (what the engine's batch path decides)
    assert len(in_turn) == len(commands), "under the bounds every command is decided"
    kept_commands, events = kept(commands, in_turn)
    assert kept_commands == tuple(command for command, _ in decisions)
    assert events == tuple(event for _, decided in decisions for event in decided)
    if not decisions:
        return
    stored = batch_command(kept_commands)
    assert decide_stored(before, stored) == events, "re-deciding the batch gives its events"
    state = before
    for event in events:
        state = evolve(state, event)
    assert state == after, "the batch folds to the state of the one-by-one decisions"
    assert len(commands_of(stored)) == len(decisions)
    assert all(holds(stored, command) for command, _ in decisions)
    decoded = codec.decode_decision(codec.encode_decision(stored, events))
    assert decoded.command == stored and decoded.events == events


def test_one_command_is_recorded_as_itself_and_several_as_decide_all() -> None:
    one = complete("p0", attempt=1, at_ms=2_000)
    two = complete("p1", attempt=1, at_ms=2_500)
    assert batch_command((one,)) is one
    stored = batch_command((one, two))
    assert isinstance(stored, DecideAll)
    assert stored.commands == (one, two) and stored.at_ms == 2_500 and stored.run_id == one.run_id
    assert holds(stored, two) and not holds(stored, complete("p2", at_ms=2_000))
    assert not holds(one, two) and holds(one, one)
    with pytest.raises(AssertionError, match="one run"):
        batch_command((one, complete("p1", run_id="other", at_ms=2_000)))


def test_a_batch_never_holds_more_than_commands_per_decision_max_commands() -> None:
    many = tuple(complete(f"p{i}", at_ms=2_000 + i) for i in range(commands_per_decision_max + 1))
    assert isinstance(batch_command(many[:-1]), DecideAll)
    with pytest.raises(AssertionError, match="commands_per_decision_max"):
        batch_command(many)


def test_run_history_names_a_batchs_commands_bounded() -> None:
    many = tuple(complete(f"p{i}", at_ms=2_000 + i) for i in range(12))
    label = _command_label(batch_command(many))
    assert label.startswith("DecideAll(12): complete_task p0#1, complete_task p1#1"), label
    assert label.count("complete_task") == batch_commands_shown_max and label.endswith(", ...")
    assert _command_label(batch_command(many[:2])) == (
        "DecideAll(2): complete_task p0#1, complete_task p1#1"
    )
    assert _command_label(many[0]) == "CompleteTask p0#1"


def test_a_decide_all_never_arrives_as_a_command() -> None:
    stored = batch_command((complete("p0", at_ms=2_000), complete("p1", at_ms=2_001)))
    with pytest.raises(DecodeError, match="not a valid command"):
        codec.decode_command(codec.encode(stored))


def test_a_sub_command_refused_now_is_named_by_its_index() -> None:
    state = fan_out(2)
    refused = complete("nope", at_ms=2_001)
    assert isinstance(decide_stored(state, refused), Rejection), "an unknown step is refused"
    stored = DecideAll(
        run_id=state.run_id, at_ms=3_000, commands=(complete("p0", at_ms=2_000), refused)
    )
    decided = decide_stored(state, stored)
    assert isinstance(decided, Rejection), decided
    assert "decide_all command 2 of 2" in decided.message, decided


def test_the_auditor_re_decides_a_batch_and_finds_a_forged_one() -> None:
    before = fan_out(3)
    commands = (complete("p0", {"i": 0}, at_ms=2_000), complete("p1", {"i": 1}, at_ms=2_001))
    decisions, _ = one_by_one(before, commands)
    events = tuple(event for _, decided in decisions for event in decided)
    good = codec.encode_decision(batch_command(commands), events)
    forged = codec.encode_decision(batch_command(commands), events[: len(events) // 2])
    first = codec.encode_decision(*given_start(3))
    report = audit_history("r1", [(1, first), (2, good)])
    assert report.consistent, report.summary()
    report = audit_history("r1", [(1, first), (2, forged)])
    assert not report.consistent and report.divergence is not None
    assert report.divergence.seq == 2 and report.divergence.kind == "decide"


def given_start(branches: int) -> tuple[AnyCommand, tuple[AnyEvent, ...]]:
    steps = [task(f"p{index}", retry=retry(3)) for index in range(branches)]
    join = task("join", *(f"p{index}" for index in range(branches)))
    first = start(workflow(*steps, join, name="fan_out"), {"n": branches})
    command, events = given(first).history[0]
    assert command is not None
    return command, events


@pytest.mark.parametrize("path", sorted(HISTORIES.glob("*.jsonl")), ids=lambda path: path.stem)
def test_the_events_only_decoder_agrees_with_the_decision_decoder(path: Path) -> None:
    for line in path.read_bytes().splitlines():
        assert codec.decode_events(line) == codec.decode_decision(line).events, path.name


def test_the_events_only_decoder_refuses_what_is_no_history_message() -> None:
    with pytest.raises(DecodeError, match="not a valid history message"):
        codec.decode_events(b"{not json")
    with pytest.raises(DecodeError, match="not a valid history message"):
        codec.decode_events(b'{"command": {}, "events": 3}')
