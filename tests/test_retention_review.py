"""Review of the purge cut short / retention log position change (r14-rel-b), against a real
nats-server and a real SQLite file of query tables (dagnats/runtime/retention.py
`Retention.drop_rows` and `_finish`, dagnats/runtime/retention_rows.py `drop_logged`):

- Finishing a purge cut short was tried once: when it failed (the server did not answer in
  time), the position in the log was stored past its record all the same, so no read finished
  it again, in this process or after a restart (its timer, snapshot and marker stayed). Now
  the position is held short of it and it is tried again (fixed on this branch).
- The position is held short of a record whose purged history the query tables' checkpoint
  has not passed; a run purged before the projector read its last messages left the
  checkpoint below them until some other run appended history (purged messages are never
  delivered), so the record was read again, and its rows deleted again, at every poll, and
  finished again at every start of serve. Now it is released once the stream holds nothing
  the projection has still to apply up to it and the checkpoint stood still
  `held_release_ms` (a projector's batch in hand, fetched before the purge, is committed by
  then; one committed later than the record was first held starts the wait again).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest
from nats.js import JetStreamContext

from dagnats.runtime import retention
from dagnats.runtime.clock import now_ms
from dagnats.runtime.log import JetStreamEventLog
from dagnats.runtime.nats_server import EmbeddedNats
from dagnats.runtime.projector import SqliteTarget
from dagnats.runtime.retention import Retention, purge_run
from dagnats.runtime.retention_rows import read_position
from projections.base import Message
from projections.sqlite import QueryTables
from tests.projection_support import completed_run, tables_caught_up
from tests.test_purge_cut_short import ended_run, killed_after_history_purge, leftovers
from tests.test_query_tables_serve import append
from tests.test_retention_position import reads_of, runs_rows, tables_of

paused_request_timeout_s = 0.5  # (the reader's requests while the server is paused)


async def test_a_finish_that_failed_is_tried_again(
    private_server: EmbeddedNats,
    private_js: JetStreamContext,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A purge SIGKILLed after its history purge; serve's reader reads its record, then the
    server stops answering for a moment (paused) while the reader finishes the purge: a
    later read (or a restarted serve) must finish it."""
    js, path = private_js, tmp_path / "serve.sqlite"
    await ended_run(js, "cut", seed=1)
    await tables_caught_up(js, path)
    await killed_after_history_purge(private_server.url, "cut", tmp_path)
    pid = private_server.pid
    assert pid is not None
    read = retention.read_records

    async def read_then_pause(reader: JetStreamContext, after_seq: int, last_seq: int) -> Any:
        found = await read(reader, after_seq, last_seq)
        os.kill(pid, signal.SIGSTOP)  # (the server stops answering: a pause, a failover)
        return found

    monkeypatch.setattr(retention, "read_records", read_then_pause)
    impatient = js._nc.jetstream(timeout=paused_request_timeout_s)
    try:
        await Retention(impatient, path).drop_rows()
    finally:
        os.kill(pid, signal.SIGCONT)
    monkeypatch.undo()
    assert await leftovers(js, "cut") == {"marker": True, "snapshot": True, "timer": True}, (
        "the finish failed while the server was paused"
    )

    position = read_position(path)
    assert position is not None and position.seq == 0, "the position is held short of it"

    await Retention(js, path).drop_rows()  # (the next poll of a serve started again)
    assert await leftovers(js, "cut") == {"marker": False, "snapshot": False, "timer": False}, (
        "a purge whose finish failed is finished at a later read of the log"
    )
    position = read_position(path)
    assert position is not None and position.seq == 1, "then the position passes its record"


class FakeClock:
    """Retention's monotonic clock, moved by the test (`retention.monotonic_ms`)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.ms = 0
        monkeypatch.setattr(retention, "monotonic_ms", lambda: self.ms)


async def test_a_history_purged_before_the_projector_read_it_does_not_hold_the_position(
    private_js: JetStreamContext, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`run delete` right after a run ended, before the query tables applied its last
    messages, then no history for a while: the projector caught up with all the stream holds,
    and the record was still read again (rows deleted again) at every poll."""
    js, path = private_js, tmp_path / "serve.sqlite"
    clock = FakeClock(monkeypatch)
    await tables_of(js, path, "kept")
    await append(JetStreamEventLog(js), "late", completed_run("late"))  # (not applied yet)
    await purge_run(js, "late", reason="run delete", at_ms=now_ms())
    checkpoint = await tables_caught_up(js, path)  # (the purged messages are never delivered)
    reader = Retention(js, path)
    await reader.drop_rows()

    reads = reads_of(monkeypatch)
    clock.ms += retention.held_release_ms - 1
    await reader.drop_rows()
    assert reads == [(0, 1)], "held a while (a projector may hold a batch of it in hand)"
    clock.ms += 1
    await reader.drop_rows()  # (released)
    position = read_position(path)
    assert position is not None and position.seq == 1, "the position passed the record"
    reads.clear()
    for _ in range(3):
        await reader.drop_rows()  # (serve's next polls, one a second)
    assert reads == [], (
        f"the record is read again at every poll ({reads}): the query tables' checkpoint "
        f"({checkpoint}) stays below the purged history, which the projector never gets"
    )
    assert runs_rows(path) == ["kept"]


async def test_a_batch_committed_while_held_starts_the_wait_again(
    private_js: JetStreamContext, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A projector fetched the first message of a run before its purge, and commits it (the
    run's rows) just before the record would be released: its checkpoint moved, still below
    the purged history; the record is held `held_release_ms` again, and the rows go."""
    js, path = private_js, tmp_path / "serve.sqlite"
    log = JetStreamEventLog(js)
    clock = FakeClock(monkeypatch)
    await tables_of(js, path, "kept")
    await append(log, "late", completed_run("late"))
    fetched: list[Message] = [(seq, "late", data) async for seq, data in log.read("late")]
    await purge_run(js, "late", reason="run delete", at_ms=now_ms())
    reader = Retention(js, path)
    await reader.drop_rows()

    clock.ms += retention.held_release_ms - 1
    target = SqliteTarget(path, QueryTables())
    try:
        await target.apply(fetched[:1], await target.open())  # (the batch it had in hand)
    finally:
        await target.close()
    assert runs_rows(path) == ["kept", "late"], "the projector wrote the purged run's rows"
    clock.ms += 1
    await reader.drop_rows()
    assert runs_rows(path) == ["kept"], "they go"
    position = read_position(path)
    assert position is not None and position.seq == 0, "the record is held again"
    clock.ms += retention.held_release_ms
    await reader.drop_rows()
    position = read_position(path)
    assert position is not None and position.seq == 1, "then released"


async def test_history_the_projector_has_still_to_apply_holds_the_record(
    private_js: JetStreamContext, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another run's messages before the purged history, not applied yet (the projector
    lags): the record stays held however long, until the projector applied them and its
    checkpoint stood still `held_release_ms`."""
    js, path = private_js, tmp_path / "serve.sqlite"
    log = JetStreamEventLog(js)
    clock = FakeClock(monkeypatch)
    await tables_of(js, path, "kept")
    await append(log, "other", completed_run("other"))  # (not applied yet)
    await append(log, "late", completed_run("late"))
    await purge_run(js, "late", reason="run delete", at_ms=now_ms())
    reader = Retention(js, path)
    await reader.drop_rows()
    clock.ms += 10 * retention.held_release_ms
    await reader.drop_rows()
    position = read_position(path)
    assert position is not None and position.seq == 0, "held: the stream holds 'other'"

    await tables_caught_up(js, path)
    await reader.drop_rows()
    clock.ms += retention.held_release_ms - 1
    await reader.drop_rows()
    position = read_position(path)
    assert position is not None and position.seq == 0, "held: the checkpoint just moved"
    clock.ms += 1
    await reader.drop_rows()
    position = read_position(path)
    assert position is not None and position.seq == 1, "released"
    assert runs_rows(path) == ["kept", "other"]
