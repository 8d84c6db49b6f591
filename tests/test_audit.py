"""The replay audit: clean histories pass; a history altered on purpose (a mutated event, an
extra event, a decide changed in a test double, a wrong snapshot, a wrong SQLite row) is caught
at the right place. Offline: `dagnats.replay.replay(path)` and `dagnats replay FILE`.
"""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlite_utils import Database
from typer.testing import CliRunner

from dagnats.audit import audit_history
from dagnats.cli import app
from dagnats.replay import HistoryDivergedError, replay
from kernel import codec
from kernel.commands import AnyCommand, CompleteTask, Rejection
from kernel.decide import decide
from kernel.events import AnyEvent, Decision
from kernel.state import RunState
from projections.base import SqliteRunner
from projections.snapshot import fold_messages, make_snapshot
from projections.sqlite import QueryTables, stored_rows
from tests.projection_support import completed_run, run_messages
from tests.strategies import RUN_ID, Run, runs

HISTORIES = Path(__file__).parent / "histories"
GOLDEN = sorted(p for p in HISTORIES.glob("*.jsonl") if p.name != "v1_step_failed.jsonl")


def numbered(messages: list[bytes]) -> list[tuple[int, bytes]]:
    return [(index + 1, data) for index, data in enumerate(messages)]


def with_events(data: bytes, events: tuple[AnyEvent, ...]) -> bytes:
    decision = codec.decode_decision(data)
    return codec.encode(Decision(command=decision.command, events=events))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(run=runs(commands_max=30))
def test_a_generated_history_is_consistent(run: Run) -> None:
    messages = numbered(run_messages(run))
    report = audit_history(RUN_ID, messages)
    assert report.consistent, report.summary()
    assert report.messages == len(messages)
    assert report.events == len(run.events)
    assert report.status == run.final.status


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(run=runs(commands_max=30), data=st.data())
def test_an_extra_recorded_event_is_caught_at_its_message(run: Run, data: st.DataObject) -> None:
    messages = run_messages(run)
    index = data.draw(st.integers(0, len(messages) - 1), label="altered message")
    recorded = codec.decode_decision(messages[index]).events
    messages[index] = with_events(messages[index], (*recorded, recorded[-1]))
    report = audit_history(RUN_ID, numbered(messages))
    assert report.divergence is not None
    assert (report.divergence.kind, report.divergence.index) == ("decide", index + 1)
    assert f"event {len(recorded) + 1} differs" in report.divergence.message
    assert report.divergence.now == "(no event)"


def test_a_mutated_event_is_caught_with_its_index_command_and_both_values() -> None:
    messages = completed_run()
    decision = codec.decode_decision(messages[1])
    completed = decision.events[0]
    changed = msgspec.structs.replace(completed, output=msgspec.Raw(b'{"forged":true}'))
    messages[1] = with_events(messages[1], (changed,))
    report = audit_history(RUN_ID, numbered(messages))
    divergence = report.divergence
    assert divergence is not None
    assert (divergence.kind, divergence.index, divergence.seq) == ("decide", 2, 2)
    assert '"complete_task"' in divergence.command and '"step_id":"a"' in divergence.command
    assert '"forged":true' in divergence.recorded and "forged" not in divergence.now
    assert "divergence (decide) at message 2" in report.summary()


def test_a_changed_decide_in_a_test_double_is_caught_at_the_first_command_it_changes() -> None:
    def changed_decide(state: RunState, command: AnyCommand) -> tuple[AnyEvent, ...] | Rejection:
        if isinstance(command, CompleteTask) and command.step_id == "b":
            command = msgspec.structs.replace(command, output=msgspec.Raw(b'"changed"'))
        return decide(state, command)

    messages = numbered(completed_run())
    assert audit_history(RUN_ID, messages).consistent
    report = audit_history(RUN_ID, messages, decide_function=changed_decide)
    assert report.divergence is not None
    assert (report.divergence.kind, report.divergence.index) == ("decide", 3)
    assert '"changed"' in report.divergence.now


def test_an_undecodable_message_is_a_decode_divergence() -> None:
    messages = completed_run()
    messages[2] = b'{"command": 1}'
    report = audit_history(RUN_ID, numbered(messages))
    assert report.divergence is not None
    assert (report.divergence.kind, report.divergence.index) == ("decode", 3)
    assert report.messages == 3 and report.events > 0


def test_the_snapshot_and_the_rows_are_compared_with_the_fold() -> None:
    messages = numbered(completed_run())
    state, last_seq = fold_messages(RunState(), 0, messages[:2])
    good = make_snapshot(state, last_seq)
    db = Database(memory=True)
    SqliteRunner(db, QueryTables()).apply_all([(s, RUN_ID, d) for s, d in messages])
    rows = stored_rows(db, RUN_ID)
    report = audit_history(RUN_ID, messages, snapshot=good, rows=rows)
    assert report.consistent and report.snapshot_checked and report.rows_checked
    assert "snapshot and rows agree" in report.summary()

    wrong = make_snapshot(msgspec.structs.replace(state, status="failed"), last_seq)
    divergence = audit_history(RUN_ID, messages, snapshot=wrong).divergence
    assert divergence is not None and divergence.kind == "snapshot"
    assert "'status'" in divergence.message and divergence.now == "'failed'"

    db.execute("UPDATE steps SET attempt = 7 WHERE step_id = 'b'")
    divergence = audit_history(RUN_ID, messages, rows=stored_rows(db, RUN_ID)).divergence
    assert divergence is not None and divergence.kind == "rows"
    assert "steps[b].attempt" in divergence.message and divergence.now == "7"

    divergence = audit_history(RUN_ID, messages, rows=(None, [])).divergence
    assert divergence is not None and divergence.kind == "rows"


@pytest.mark.parametrize("path", GOLDEN, ids=[p.name for p in GOLDEN])
def test_the_golden_histories_replay(path: Path) -> None:
    report = replay(path)
    assert report.consistent and report.messages >= 3


def test_replay_raises_at_the_first_divergence_naming_the_file_and_line(tmp_path: Path) -> None:
    lines = completed_run()
    lines[2] = with_events(lines[2], codec.decode_decision(lines[2]).events[:1])
    path = tmp_path / "altered.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(HistoryDivergedError, match=r"altered\.jsonl: .*at message 3") as caught:
        replay(path)
    assert isinstance(caught.value, AssertionError)
    assert caught.value.divergence.index == 3


def test_the_replay_command_exits_0_on_a_clean_history_and_1_on_an_altered_one(
    tmp_path: Path,
) -> None:
    clean = tmp_path / "clean.jsonl"
    clean.write_bytes(b"\n".join(completed_run()) + b"\n")
    result = CliRunner().invoke(app, ["replay", str(clean)])
    assert result.exit_code == 0, result.output
    assert "consistent (3 messages" in result.output
    lines = completed_run()
    lines[0] = lines[0].replace(b'"at_ms":1000,"seed"', b'"at_ms":1001,"seed"', 1)
    altered = tmp_path / "altered.jsonl"
    altered.write_bytes(b"\n".join(lines) + b"\n")
    result = CliRunner().invoke(app, ["replay", str(altered)])
    assert result.exit_code == 1
    assert "at message 1" in result.output
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    assert CliRunner().invoke(app, ["replay", str(empty)]).exit_code == 1
