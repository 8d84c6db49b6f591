"""A process running serve's shared projection tail (snapshots + a slow SQLite projection),
for the SIGKILL test of tests/test_projector_shared.py:
`python -m tests.shared_tail_child NATS_URL SQLITE_PATH`. Runs until killed."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from dagnats.runtime.projector import SnapshotTarget, SqliteTarget
from dagnats.runtime.projector_shared import SharedTail
from tests.nats_fixtures import connect
from tests.slow_projection import SlowProjection

BATCH_MAX = 20


async def main(url: str, path: Path) -> None:
    nc = await connect(url)
    js = nc.jetstream()
    targets = (SnapshotTarget(js), SqliteTarget(path, SlowProjection()))
    tail = SharedTail(js, targets, batch_max=BATCH_MAX, idle_ms=100, linger_ms=20)
    await tail.run(asyncio.Event())


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], Path(sys.argv[2])))
