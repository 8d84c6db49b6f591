"""The snapshot projection shared by several engines on one NATS, against a real nats-server:
one owner at a time through a KV lease (taken over when the owner stops refreshing), no
checkpoint fights between two projectors, and a runs bucket deleted or emptied behind the
projector's back rebuilt while its checkpoint says it is caught up.

Every wait is bounded; nothing is mocked.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import nats.js.errors
import pytest
import pytest_asyncio
from nats.js import JetStreamContext

from dagnats.runtime import settings
from dagnats.runtime.connection import Connection
from dagnats.runtime.kv_keys import kv_keys
from dagnats.runtime.lease import Lease
from dagnats.runtime.log import JetStreamEventLog
from dagnats.runtime.nats_server import EmbeddedNats
from dagnats.runtime.projector import (
    LEASE_PREFIX,
    MARKER_KEY,
    SNAPSHOTS,
    Projector,
    SnapshotTarget,
    read_status,
    stream_last_seq,
)
from dagnats.runtime.resources import RUNS_BUCKET, ensure_resources
from projections.snapshot import decode_snapshot
from tests.nats_fixtures import connect, wait_for
from tests.projection_support import completed_run

takeover_bound_ms = settings.lease_ttl_ms + 5 * settings.lease_refresh_interval_ms
rebuild_bound_ms = 15_000
stop_bound_s = 10.0


@pytest_asyncio.fixture
async def connections(private_server: EmbeddedNats) -> AsyncIterator[list[Connection]]:
    """Two connections (two engines' worth) to this test's own server."""
    opened = [Connection(await connect(private_server.url)) for _ in range(2)]
    await ensure_resources(opened[0].js)
    try:
        yield opened
    finally:
        for connection in opened:
            await connection.close()


async def append_runs(log: JetStreamEventLog, prefix: str, count: int) -> list[str]:
    run_ids = []
    for index in range(count):
        run_id = f"{prefix}-{index}"
        last = 0
        for number, data in enumerate(completed_run(run_id, at_ms=1_000 + index)):
            last = await log.append(
                run_id, data, msg_id=f"{run_id}:{number}", expected_last_seq=last
            )
        run_ids.append(run_id)
    return run_ids


async def snapshot_ids(js: JetStreamContext) -> set[str]:
    """The run ids with a usable snapshot in the runs bucket."""
    try:
        kv = await js.key_value(RUNS_BUCKET)
    except nats.js.errors.NotFoundError:  # no bucket yet
        return set()
    keys = await kv_keys(js, RUNS_BUCKET)
    found = set()
    for key in keys:
        if key == MARKER_KEY:
            continue
        with contextlib.suppress(Exception):
            if decode_snapshot((await kv.get(key)).value, key) is not None:
                found.add(key)
    return found


@contextlib.asynccontextmanager
async def projecting(js: JetStreamContext) -> AsyncIterator[Projector]:
    projector = Projector(js, SnapshotTarget(js), idle_ms=100, linger_ms=20)
    stop = asyncio.Event()
    task = asyncio.create_task(projector.run(stop))
    try:
        yield projector
    finally:
        stop.set()
        await asyncio.wait_for(task, stop_bound_s)


async def test_a_lease_has_one_owner_and_passes_on_when_its_owner_stops_refreshing(
    connections: list[Connection],
) -> None:
    first = Lease(connections[0].js, "test.lease", owner="first")
    second = Lease(connections[1].js, "test.lease", owner="second")
    assert await first.acquire() and first.held()
    assert not await second.acquire() and not second.held(), "one owner at a time"
    assert await first.refresh() and await second.holder() == "first"
    # `first` stops refreshing (a hung engine): its value expires by the bucket's TTL
    await wait_for(second.acquire, timeout_ms=takeover_bound_ms, what="the takeover")
    assert second.held() and await first.holder() == "second"
    assert not await first.refresh(), "the old owner learns it lost the lease"
    assert not first.held()
    await second.release()
    assert await first.acquire(), "a released lease is free at once"


async def test_two_projectors_share_the_snapshots_without_fighting(
    connections: list[Connection], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dagnats.projector")
    log = connections[0].history
    async with projecting(connections[0].js) as one, projecting(connections[1].js) as two:
        run_ids: list[str] = []
        for round_ in range(6):  # appends while both run, each round a few batches
            run_ids += await append_runs(log, f"both{round_}", 5)
            await asyncio.sleep(0.2)
        js = connections[0].js

        async def all_snapshotted() -> bool:
            return set(run_ids) <= await snapshot_ids(js)

        await wait_for(all_snapshotted, timeout_ms=rebuild_bound_ms, what="every snapshot")
        owners = [p for p in (one, two) if p.lease is not None and p.lease.held()]
        assert len(owners) == 1, "exactly one projector runs the snapshots"
        status = await read_status(js, SNAPSHOTS)
        assert status is not None and status.seq == await stream_last_seq(js)
    fights = [r.getMessage() for r in caplog.records if "starting over" in r.getMessage()]
    assert fights == [], fights
    standby = [r for r in caplog.records if "standing by" in r.getMessage()]
    assert standby, "the other projector said it stands by"


async def test_the_standby_takes_the_snapshots_over_when_the_owner_is_cut_off(
    connections: list[Connection], private_server: EmbeddedNats
) -> None:
    log, js = connections[0].history, connections[0].js

    async def snapshotted(run_ids: list[str]) -> bool:
        return set(run_ids) <= await snapshot_ids(js)

    owner_nc = await connect(private_server.url)
    async with projecting(owner_nc.jetstream()) as owner:
        assert owner.lease is not None
        await wait_for(owner.lease.acquire, timeout_ms=takeover_bound_ms, what="the owner")
        async with projecting(connections[1].js) as standby:
            assert standby.lease is not None
            first = await append_runs(log, "early", 3)
            await wait_for(lambda: snapshotted(first), timeout_ms=rebuild_bound_ms, what="early")
            assert owner.lease.held() and not standby.lease.held()
            await owner_nc.close()  # the owner is cut off: no refresh, no release
            later = await append_runs(log, "late", 3)
            await wait_for(
                lambda: snapshotted(later), timeout_ms=takeover_bound_ms + rebuild_bound_ms,
                what="the standby to take over and snapshot the later runs",
            )  # fmt: skip
            assert standby.lease.held() and not owner.lease.held()
            assert await standby.lease.holder() == standby.lease.owner
            assert standby.lease.key == LEASE_PREFIX + SNAPSHOTS


@pytest.mark.parametrize("how", ["purge", "delete"])
async def test_a_deleted_or_emptied_runs_bucket_is_rebuilt_though_the_checkpoint_is_current(
    connections: list[Connection], how: str
) -> None:
    log, js = connections[0].history, connections[0].js
    run_ids = await append_runs(log, "kept", 4)
    async with projecting(js):

        async def all_back() -> bool:
            return set(run_ids) <= await snapshot_ids(js)

        await wait_for(all_back, timeout_ms=rebuild_bound_ms, what="the first snapshots")
        status = await read_status(js, SNAPSHOTS)
        assert status is not None and status.seq == await stream_last_seq(js), "caught up"
        if how == "purge":
            await js.purge_stream(f"KV_{RUNS_BUCKET}")
        else:
            await js.delete_key_value(RUNS_BUCKET)
        assert not await snapshot_ids(js), "the snapshots are gone"
        await wait_for(all_back, timeout_ms=rebuild_bound_ms, what="the snapshots to come back")
