"""Admission compaction through a real `dagnats serve` process (tests/fault_support.py), with
its roles: the engine snapshots a gate, serve's admin connection purges below the snapshot.

A workflow with `concurrency.max_runs: 1` runs a burst of runs, enough that its gate passes
the compaction bound (lowered through the `$DAGNATS_TEST_ADMISSION_COMPACT_AFTER` seam of
dagnats/runtime/admission_compact.py): the gate's subject on the history stream shrinks to its
last snapshot and what followed, and every run is still admitted once, one at a time. Then
serve is SIGKILLed between a snapshot and its purge (the `$DAGNATS_TEST_ADMISSION_HOLD_BEFORE_
PURGE` seam holds the first purge and says so in a file): after a restart no run is lost or
admitted twice, the limit was never exceeded, and the next compaction purges what the killed
one left. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import subprocess
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Final

import msgspec
import nats.js.errors
import pytest
import pytest_asyncio
from nats.js import JetStreamContext

from dagnats.client import Client
from dagnats.runtime.admission_compact import (
    COMPACT_AFTER_ENV,
    HOLD_BEFORE_PURGE_ENV,
    Compactor,
    serve_compaction,
)
from dagnats.runtime.resources import HISTORY_STREAM, history_subject
from kernel.admission import (
    INITIAL_ADMISSION,
    AdmissionSnapshotted,
    AdmissionState,
    decode_admission,
    fold_admission,
    gate_id_of,
)
from kernel.events import RunAdmitted, RunCompleted, StepScheduled
from tests.fault_support import (
    Processes,
    connected,
    dagnats_command,
    decisions_of,
    events_of,
    workflow,
)
from tests.nats_fixtures import unique, wait_for
from tests.test_result_crashes import kill_serve

COMPACT_AFTER: Final = 6  # gate messages since the last snapshot before the next one
BURST: Final = 12  # runs started at once: 2 gate messages each, so a few compactions
WAIT_MS: Final = 30_000
gate_messages_max: Final = 1_000
ONE_STEP: Final = [{"id": "only", "task": "fault.work"}]


@pytest_asyncio.fixture
async def procs(tmp_path: Path) -> AsyncIterator[Processes]:
    processes = Processes(tmp_path)
    processes.extra_env[COMPACT_AFTER_ENV] = str(COMPACT_AFTER)
    try:
        yield processes
    finally:
        await processes.close()


class Gate(msgspec.Struct, frozen=True):
    messages: list[tuple[int, bool]]  # (seq, is a snapshot), in order
    state: AdmissionState  # folded from them


async def read_gate(js: JetStreamContext, gate_id: str) -> Gate:
    """The gate subject's messages on the history stream, and its state folded from them."""
    subject = history_subject(gate_id)
    found: list[tuple[int, bool]] = []
    state, seq = INITIAL_ADMISSION, 1
    for _ in range(gate_messages_max):
        try:
            message = await js.get_msg(HISTORY_STREAM, seq=seq, subject=subject, next=True)
        except nats.js.errors.NotFoundError:
            break
        assert message.seq is not None and message.data is not None
        events = decode_admission(message.data).events
        state = fold_admission(state, events)
        found.append((message.seq, isinstance(events[-1], AdmissionSnapshotted)))
        seq = message.seq + 1
    return Gate(found, state)


async def settled_gate(js: JetStreamContext, gate_id: str) -> Gate:
    """The gate once no run holds it or waits (its last release is appended after its run's
    end) and the compaction its last append made due has run (a snapshot, then the purge
    below it): read until it is still."""
    read: list[Gate] = []

    async def settled() -> bool:
        read.append(await read_gate(js, gate_id))
        gate = read[-1]
        free = not gate.state.holders and not gate.state.waiting
        return free and gate.messages[0][1] and len(gate.messages) <= COMPACT_AFTER

    await wait_for(settled, timeout_ms=WAIT_MS, what=f"gate {gate_id} free, from a snapshot")
    return read[-1]


async def check_runs(client: Client, procs: Processes, runs: Sequence[str]) -> None:
    """Every run completed, its task called once, admitted at most once; with max_runs 1 no
    two runs were ever running at once (from their first step to their end)."""
    spans: list[tuple[int, int, str]] = []
    for run in runs:
        final = await client.wait(run, timeout_s=WAIT_MS / 1000)
        assert final.status == "completed", (run, final.status, final.error)
        events = events_of(await decisions_of(client, run))
        assert sum(isinstance(e, RunAdmitted) for e in events) <= 1, run
        first = min(e.at_ms for e in events if isinstance(e, StepScheduled))
        ended = [e.at_ms for e in events if isinstance(e, RunCompleted)]
        assert len(ended) == 1, run
        spans.append((first, ended[0], run))
    calls = sorted(call["run"] for call in procs.calls())
    assert calls == sorted(runs), "a run's task was called twice or never"
    spans.sort()
    for (_, end, before), (start, _, after) in itertools.pairwise(spans):
        assert start >= end, f"{after} started at {start} before {before} ended at {end}"


async def test_a_gate_compacts_through_serve_and_a_kill_between_snapshot_and_purge_loses_nothing(
    procs: Processes, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    serve = await procs.serve(data_dir, http=None)
    procs.cli_worker(serve.url)
    name = unique("compacted")
    gate_id = gate_id_of(name, "")
    runs = [f"burst-{index}" for index in range(BURST)]
    async with connected(serve.url) as client, connected(serve.url, "admin") as admin:
        js = admin.connection.js
        await client.register_workflow(workflow(name, ONE_STEP, concurrency={"max_runs": 1}))
        await asyncio.gather(*(client.start(name, {}, run_id=run) for run in runs))
        await check_runs(client, procs, runs)
        kept = (await settled_gate(js, gate_id)).messages
        # 2 * BURST messages and a snapshot every COMPACT_AFTER: all but the last purged
        assert len(kept) <= COMPACT_AFTER < 2 * BURST, kept

    def purges_reported() -> bool:  # serve refreshes its status record every few seconds
        done = procs.cli("status", "--json")
        assert done.returncode == 0, done.stderr
        engine = json.loads(done.stdout)["engine"] or {"counters": {}}
        return int(engine["counters"].get("compaction.purged", 0)) >= 1

    await wait_for(purges_reported, timeout_ms=WAIT_MS, what="the purges in serve's status")
    await kill_serve(serve)

    # serve again, holding its first purge: it appends a snapshot, says so and waits
    marker = tmp_path / "held-purge"
    procs.extra_env[HOLD_BEFORE_PURGE_ENV] = str(marker)
    serve = await procs.serve(data_dir, http=None)
    one_by_one: list[str] = []
    async with connected(serve.url) as client:
        for index in range(COMPACT_AFTER):  # two messages a run: a purge is due within these
            run = f"one-by-one-{index}"
            one_by_one.append(run)
            await client.start(name, {}, run_id=run)

            async def ended_or_held(run: str = run) -> bool:
                return marker.exists() or (await client.get_run(run)).status == "completed"

            await wait_for(ended_or_held, timeout_ms=WAIT_MS, what=f"{run} ended, or held")
            if marker.exists():
                break
    assert marker.exists(), "no purge was due"
    held_gate, held_seq = marker.read_text().split()
    assert held_gate == gate_id
    async with connected(serve.url, "admin") as admin:
        before_kill = (await read_gate(admin.connection.js, gate_id)).messages
    assert (int(held_seq), True) in before_kill, before_kill  # the snapshot is appended
    assert before_kill[0][0] < int(held_seq), before_kill  # and nothing below it is purged
    await kill_serve(serve)

    del procs.extra_env[HOLD_BEFORE_PURGE_ENV]
    serve = await procs.serve(data_dir, http=None)
    more = [f"after-{index}" for index in range(BURST // 2)]
    async with connected(serve.url) as client, connected(serve.url, "admin") as admin:
        await asyncio.gather(*(client.start(name, {}, run_id=run) for run in more))
        await check_runs(client, procs, [*runs, *one_by_one, *more])
        kept = (await settled_gate(admin.connection.js, gate_id)).messages
    assert kept[0][0] > int(held_seq), kept  # compaction resumed and purged
    assert len(kept) <= COMPACT_AFTER, kept


def test_the_compaction_seam_takes_an_integer_of_at_least_two_and_names_a_bad_one() -> None:
    compactor = Compactor()
    serve_compaction(compactor, None, {COMPACT_AFTER_ENV: "7"})
    assert compactor.after == 7 and compactor.purge is None  # (no admin: nothing purged)
    serve_compaction(compactor, None, {})
    assert compactor.after == 7  # unset: left as it is
    for bad in ("1", "many", "-3"):
        with pytest.raises(ValueError, match=rf"\${COMPACT_AFTER_ENV} '{bad}'.*>= 2"):
            serve_compaction(Compactor(), None, {COMPACT_AFTER_ENV: bad})


def test_serve_refuses_a_bad_compaction_seam_in_one_line(tmp_path: Path) -> None:
    env = {**os.environ, COMPACT_AFTER_ENV: "many"}
    argv = [*dagnats_command(), "serve", "--data-dir", str(tmp_path / "data"), "--nats-port", "0"]
    done = subprocess.run(argv, check=False, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done
    assert f"${COMPACT_AFTER_ENV} 'many' must be an integer >= 2" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "data" / "store").exists()
