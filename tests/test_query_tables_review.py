"""Review of the query tables' run states kept in memory between batches (projections/sqlite.py,
version 3), against a real nats-server: the tables equal a rebuild from zero when a run's rows
are changed under a running instance by another connection.

- retention (`run delete`, `serve --retention`) deletes a purged run's rows from every table
  (`retention.delete_rows`, its own connection) without moving the checkpoint: the state the
  instance kept of that run is not that of the rows any more. A run started again under the
  same id (a caller-given id) must then be folded from the start, as a rebuild does.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from nats.js import JetStreamContext

from dagnats.runtime.clock import now_ms
from dagnats.runtime.log import JetStreamEventLog
from dagnats.runtime.projector import Projector, SqliteTarget
from dagnats.runtime.resources import ensure_resources
from dagnats.runtime.retention import delete_rows, purge_run
from projections.sqlite import QueryTables
from tests.projection_support import completed_run
from tests.test_projector_shared import dump

RUN = "again"


async def append(log: JetStreamEventLog, run_id: str, messages: list[bytes]) -> None:
    """Append as the engine does (its message id names the payload's digest)."""
    last = await log.last_seq(run_id)
    for data in messages:
        msg_id = f"{run_id}:{last}:{hashlib.blake2b(data, digest_size=8).hexdigest()}"
        last = await log.append(run_id, data, msg_id=msg_id, expected_last_seq=last)


async def _rebuilt(js: JetStreamContext, path: Path) -> dict[str, list[tuple[object, ...]]]:
    """The query tables rebuilt from sequence 0 into a new file."""
    target = SqliteTarget(path, QueryTables())
    try:
        await Projector(js, target, batch_max=50).catch_up()
    finally:
        await target.close()
    return dump(path)


async def test_a_run_started_again_after_its_purge_is_folded_from_its_start(
    private_js: JetStreamContext, tmp_path: Path
) -> None:
    js = private_js
    await ensure_resources(js)
    log = JetStreamEventLog(js)
    await append(log, "other", completed_run("other", at_ms=500))
    await append(log, RUN, completed_run(RUN, at_ms=1_000))
    path = tmp_path / "serve.sqlite"
    target = SqliteTarget(path, QueryTables())  # (one instance throughout: serve's)
    projector = Projector(js, target, batch_max=50)
    try:
        await projector.catch_up()
        assert dump(path)["runs"], "the first run is in the tables"
        await purge_run(js, RUN, reason="run delete", at_ms=now_ms())
        assert delete_rows(path, [RUN]) > 0  # (what serve's Retention.drop_rows does)
        await append(log, RUN, completed_run(RUN, at_ms=90_000))  # the same id, started again
        await projector.catch_up()
        incremental = dump(path)
    finally:
        await target.close()
    rebuilt = await _rebuilt(js, tmp_path / "rebuilt.sqlite")
    assert [row[0] for row in rebuilt["runs"]] == ["again", "other"], rebuilt["runs"]
    assert incremental["runs"] == rebuilt["runs"]
    assert incremental == rebuilt
