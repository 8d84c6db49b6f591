"""The live tail of every run's history (`JetStreamEventLog.tail`) across a nats-server
restart, against a real server restarted on its port and store: every message appended
before, around and after the restart is given once, in stream order, named by its run."""

from __future__ import annotations

import asyncio
from pathlib import Path

from dagnats.runtime.log import JetStreamEventLog
from tests.nats_fixtures import RestartableServer, unique, wait_for

ROUNDS = 3
PER_ROUND = 40


async def test_the_tail_gives_every_message_once_in_order_across_a_server_restart(
    tmp_path: Path,
) -> None:
    restartable = RestartableServer(tmp_path / "nats")
    nc = await restartable.start()
    log = JetStreamEventLog(nc.jetstream())
    runs = [unique("tailed") for _ in range(4)]
    last = dict.fromkeys(runs, 0)
    appended: list[tuple[int, str, bytes]] = []

    async def append_round(round_no: int) -> None:
        for index in range(PER_ROUND):
            run_id = runs[index % len(runs)]
            data = b"r%d-%d" % (round_no, index)
            seq = await log.append(run_id, data, msg_id=f"{run_id}:{round_no}:{index}",
                                   expected_last_seq=last[run_id])  # fmt: skip
            last[run_id] = seq
            appended.append((seq, run_id, data))

    seen: list[tuple[int, str, bytes]] = []
    tail = log.tail(after_seq=0)

    async def follow() -> None:
        async for item in tail:
            seen.append(item)

    follower = asyncio.create_task(follow())
    try:
        await append_round(0)
        await wait_for(lambda: len(seen) >= len(appended), timeout_ms=10_000, what="round 0")
        for round_no in range(1, ROUNDS):
            await restartable.restart()
            await append_round(round_no)  # (some may land before the tail's consumer is back)
            await wait_for(lambda: len(seen) >= len(appended), timeout_ms=20_000,
                           what=f"round {round_no} after a restart")  # fmt: skip
        assert seen == appended
    finally:
        follower.cancel()
        await asyncio.gather(follower, return_exceptions=True)
        await tail.aclose()
        await restartable.close()
