"""Review of the purge cut short / retention log position change (r14-rel-b), against a real
nats-server and a real SQLite file of query tables (dagnats/runtime/retention.py
`Retention.drop_rows` and `_finish`, dagnats/runtime/retention_rows.py `drop_logged`):

- Finishing a purge cut short was tried once: when it failed (the server did not answer in
  time), the position in the log was stored past its record all the same, so no read finished
  it again, in this process or after a restart (its timer, snapshot and marker stayed). Now
  the position is held short of it and it is tried again (fixed on this branch).
- (Not fixed; the test is a strict xfail.) The position is held short of a record whose
  purged history the query tables' checkpoint has not passed; a run purged before the
  projector read its last messages leaves the checkpoint below them until some other run
  appends history (purged messages are never delivered), so the record is read again, and
  its rows deleted again, at every poll, and finished again at every start of serve.
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
from dagnats.runtime.projector import Projector, SqliteTarget
from dagnats.runtime.retention import Retention, purge_run
from dagnats.runtime.retention_rows import read_position
from projections.sqlite import QueryTables
from tests.projection_support import completed_run
from tests.test_purge_cut_short import ended_run, killed_after_history_purge, leftovers
from tests.test_query_tables_serve import append
from tests.test_retention_position import reads_of, tables_of

paused_request_timeout_s = 0.5  # (the reader's requests while the server is paused)


async def caught_up(js: JetStreamContext, path: Path) -> int:
    """Run the query tables' projector over what the history stream holds; its checkpoint."""
    target = SqliteTarget(path, QueryTables())
    try:
        return await Projector(js, target, batch_max=50).catch_up()
    finally:
        await target.close()


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
    await caught_up(js, path)
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


@pytest.mark.xfail(strict=True, reason="review r14-rel-b: held until some run appends history")
async def test_a_history_purged_before_the_projector_read_it_does_not_hold_the_position(
    private_js: JetStreamContext, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`run delete` right after a run ended, before the query tables applied its last
    messages, then no history for a while: the projector caught up with all the stream holds,
    and the record is still read again (rows deleted again) at every poll."""
    js, path = private_js, tmp_path / "serve.sqlite"
    await tables_of(js, path, "kept")
    await append(JetStreamEventLog(js), "late", completed_run("late"))  # (not applied yet)
    await purge_run(js, "late", reason="run delete", at_ms=now_ms())
    checkpoint = await caught_up(js, path)  # (the purged messages are never delivered)
    reader = Retention(js, path)
    await reader.drop_rows()

    reads = reads_of(monkeypatch)
    for _ in range(3):
        await reader.drop_rows()  # (serve's next polls, one a second)
    assert reads == [], (
        f"the record is read again at every poll ({reads}): the query tables' checkpoint "
        f"({checkpoint}) stays below the purged history, which the projector never gets"
    )
