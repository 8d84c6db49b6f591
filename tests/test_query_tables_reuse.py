"""The query tables of a run id used again after its purge, fed in any batches, with retention
dropping the old life's rows on a connection of its own at any point after that life was
projected: once retention has run, the tables equal a rebuild from zero of what the history
stream then holds (the old life purged from it).

Covers the writes of projections/sqlite.py that skip reading (a batch that begins a run reads
nothing stored), that write only what changed (a held run's progress, its changed steps), and
that look a held run up again only after another connection wrote the file (`data_version`).
"""

from __future__ import annotations

import sqlite3
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlite_utils import Database

from bench.kernel_fold import build_run, chain_workflow
from dagnats.runtime.retention import delete_rows
from kernel import codec
from projections.base import Message, SqliteRunner
from projections.sqlite import QueryTables
from tests.projection_support import histories, run_messages
from tests.strategies import runs
from tests.test_projections_properties import batches, rebuilt

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
REUSED = "run-0"


def _rows(db: Database) -> dict[str, list[tuple[object, ...]]]:
    return {
        table: sorted((tuple(row) for row in db.execute(f'SELECT * FROM "{table}"')), key=repr)
        for table in QueryTables.tables
    }


@SETTINGS
@given(data=st.data())
def test_a_reused_run_id_in_any_batches_with_retention_anywhere_equals_a_rebuild(
    data: st.DataObject,
) -> None:
    history = data.draw(histories(runs_max=2, commands_max=20))
    old = history.messages
    purged_seq = max(seq for seq, run_id, _ in old if run_id == REUSED)
    new_life = run_messages(data.draw(runs(commands_max=20)), REUSED)
    last = old[-1][0]
    new: list[Message] = [(last + 1 + i, REUSED, body) for i, body in enumerate(new_life)]
    pieces = data.draw(batches([*old, *new], redeliver=False))
    # retention runs after the batch that applied the old life's last message, or later
    done = [i for i, piece in enumerate(pieces) if piece[-1][0] >= purged_seq]
    retention_after = data.draw(st.integers(done[0], len(pieces) - 1))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "query.sqlite"
        tables = QueryTables()
        runner = SqliteRunner(Database(path), tables)
        seq = runner.open()
        for index, piece in enumerate(pieces):
            seq = runner.apply_batch(piece, after_seq=seq, now_ms=0).seq
            if index == retention_after:
                delete_rows(path, [(REUSED, purged_seq)])
        live = _rows(runner.db)
        runner.db.close()
    kept = [message for message in old if message[1] != REUSED]
    expected = _rows(rebuilt([*kept, *new], QueryTables()))
    assert live == expected


def _chain(run_id: str, at_ms: int, steps: int) -> list[bytes]:
    """A chain run whose steps each fail once (past 64 events for 20 steps and more)."""
    return [
        codec.encode_decision(command, events)
        for command, events in build_run(chain_workflow(steps), run_id, at_ms)
    ]


@SETTINGS
@given(data=st.data())
def test_long_lives_restarts_and_other_writers_in_any_batches_equal_a_rebuild(
    data: st.DataObject,
) -> None:
    """Runs past `state_every_events` (stored states), the id used again, the projection
    restarted (a new instance and connection) and the file written by another connection at
    any batch boundary, retention anywhere after the old life."""
    old_life = _chain(REUSED, 1_000, data.draw(st.integers(5, 30)))
    other = _chain("run-1", 2_000, data.draw(st.integers(5, 30)))
    new_life = _chain(REUSED, 900_000, data.draw(st.integers(5, 30)))
    order = data.draw(st.permutations([0] * len(old_life) + [1] * len(other)))
    queues = {0: list(old_life), 1: list(other)}
    old: list[Message] = []
    for which in order:
        old.append((len(old) + 1, (REUSED, "run-1")[which], queues[which].pop(0)))
    purged_seq = max(seq for seq, run_id, _ in old if run_id == REUSED)
    new = [(len(old) + 1 + i, REUSED, body) for i, body in enumerate(new_life)]
    pieces = data.draw(batches([*old, *new], redeliver=False))
    done = [i for i, piece in enumerate(pieces) if piece[-1][0] >= purged_seq]
    retention_after = data.draw(st.integers(done[0], len(pieces) - 1))
    moves = data.draw(st.lists(st.sampled_from(["", "restart", "write"]), min_size=len(pieces),
                               max_size=len(pieces)))  # fmt: skip
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "query.sqlite"
        runner = SqliteRunner(Database(path), QueryTables())
        seq = runner.open()
        for index, piece in enumerate(pieces):
            seq = runner.apply_batch(piece, after_seq=seq, now_ms=0).seq
            if index == retention_after:
                delete_rows(path, [(REUSED, purged_seq)])
            if moves[index] == "restart":
                runner.db.close()
                runner = SqliteRunner(Database(path), QueryTables())
                seq = runner.open()
            elif moves[index] == "write":
                writer = sqlite3.connect(path)
                writer.execute("UPDATE runs SET workflow = workflow")
                writer.commit()
                writer.close()
        live = _rows(runner.db)
        runner.db.close()
    kept = [message for message in old if message[1] != REUSED]
    expected = _rows(rebuilt([*kept, *new], QueryTables()))
    assert live == expected
