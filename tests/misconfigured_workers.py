"""Workers whose modules set a setting out of range after construction (the CLI's check)."""

from __future__ import annotations

from dagnats.worker import Worker

short_drain = Worker()
short_drain.drain_timeout_ms = 5  # below drain_timeout_ms_min

no_concurrency = Worker()
no_concurrency.concurrency = 0


@short_drain.task("noop")
@no_concurrency.task("noop")
async def noop(payload: object) -> object:
    return payload
