"""Benchmark: reading and folding run histories from JetStream, against a bare read.

Histories are made by `decide` (never by hand) and published to DAGNATS_HISTORY on an
embedded nats-server:

- one long run of ~100k events: a chain of LONG_STEPS steps, each failing LONG_ATTEMPTS - 1
  times (task started, failed, retry scheduled, scheduled again) before it completes;
- SMALL_RUNS short runs (the chain of `bench.kernel_fold`, ~27 events each).

Timed in the same run, best of REPEATS:
- read+fold: `Engine.fold_history` (the engine's load path without snapshots:
  `JetStreamEventLog.read`, a lean push consumer (runtime/log_read.py), then
  `codec.decode_decision`, `evolve`), the path `dagnats run audit`, the client and the
  projections take too;
- bare: nats-py's ordered consumer over the same subjects that only counts messages.
For the small runs both read SMALL_CONCURRENCY runs at a time, one consumer per run.

Prints one JSON line; `value` is the long run's read+fold rate in events/s, `ratio` that rate
over the bare read's (target >= 0.9, and >= 150k events/s). Also reported: the log's read
alone (no decode) and decode+fold in memory (no I/O), which bound what a single-threaded
read+fold can reach: 1 / (1/read + 1/fold).
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Final

from nats.aio.msg import Msg
from nats.js import JetStreamContext, api

from bench.common import bench_server
from bench.kernel_fold import build_run
from bench.kernel_fold import chain_workflow as small_chain
from dagnats.runtime import settings
from dagnats.runtime.connection import Connection
from dagnats.runtime.engine import Engine
from dagnats.runtime.resources import HISTORY_STREAM, history_subject
from kernel.codec import decode_decision, encode_decision
from kernel.commands import AnyCommand, CompleteTask, FailTask, FireTimer, StartRun, TaskStarted
from kernel.decide import decide
from kernel.events import AnyEvent
from kernel.reducer import evolve
from kernel.state import INITIAL_STATE, RunState
from kernel.timers import retry_timer_id
from kernel.workflow import RetryPolicy, StepDef, WorkflowDef

LONG_STEPS: Final = 250
LONG_ATTEMPTS: Final = 100
SMALL_RUNS: Final = 2_000
SMALL_CONCURRENCY: Final = 16
REPEATS: Final = 3
PUBLISH_WINDOW: Final = 1_000
READ_TIMEOUT_S: Final = 60.0

Message = tuple[AnyCommand, tuple[AnyEvent, ...]]


def long_workflow() -> WorkflowDef:
    retry = RetryPolicy(max_attempts=LONG_ATTEMPTS, strategy="fixed", initial_delay_ms=1)
    return WorkflowDef(
        name="bench-long",
        steps=tuple(
            StepDef(
                id=f"s{index}", task="work", retry=retry,
                depends_on=(f"s{index - 1}",) if index else (),
            )
            for index in range(LONG_STEPS)
        ),
    )  # fmt: skip


def _apply(state: RunState, command: AnyCommand, out: list[Message]) -> RunState:
    decided = decide(state, command)
    assert isinstance(decided, tuple) and decided, f"{command!r} decided {decided!r}"
    out.append((command, decided))
    for event in decided:
        state = evolve(state, event)
    return state


def build_long_run(run_id: str) -> list[Message]:
    """~100k events in one run, every one decided."""
    out: list[Message] = []
    now = 1_000
    state = _apply(INITIAL_STATE, StartRun(run_id=run_id, at_ms=now, workflow=long_workflow()), out)
    for index in range(LONG_STEPS):
        step_id = f"s{index}"
        for attempt in range(1, LONG_ATTEMPTS + 1):
            now += 2
            state = _apply(
                state, TaskStarted(run_id=run_id, at_ms=now, step_id=step_id, attempt=attempt), out
            )
            if attempt == LONG_ATTEMPTS:
                done = CompleteTask(run_id=run_id, at_ms=now + 1, step_id=step_id, attempt=attempt)
                state = _apply(state, done, out)
                break
            failed = FailTask(
                run_id=run_id, at_ms=now + 1, step_id=step_id, attempt=attempt, error="flaky"
            )
            state = _apply(state, failed, out)
            timer = FireTimer(
                run_id=run_id, at_ms=now + 2, timer_id=retry_timer_id(step_id, attempt + 1),
                kind="retry", step_id=step_id, attempt=attempt + 1,
            )  # fmt: skip
            state = _apply(state, timer, out)
    assert state.status == "completed", state.status
    return out


def encoded(messages: list[Message]) -> list[bytes]:
    return [encode_decision(command, events) for command, events in messages]


def events_in(messages: list[Message]) -> int:
    return sum(len(events) for _, events in messages)


async def publish(js: JetStreamContext, run_id: str, payloads: Sequence[bytes]) -> None:
    """Publish a run's history (pipelined, in order: one connection keeps the order)."""
    subject = history_subject(run_id)
    for first in range(0, len(payloads), PUBLISH_WINDOW):
        window = payloads[first : first + PUBLISH_WINDOW]
        await asyncio.gather(*(js.publish(subject, data, stream=HISTORY_STREAM) for data in window))


async def bare_read(js: JetStreamContext, subject: str, count: int) -> None:
    """Read `count` messages of `subject` with an ordered consumer; only count them."""
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    seen = 0

    async def on_message(_message: Msg) -> None:
        nonlocal seen
        seen += 1
        if seen == count and not done.done():
            done.set_result(None)

    subscription = await js.subscribe(
        subject, stream=HISTORY_STREAM, cb=on_message, ordered_consumer=True,
        config=api.ConsumerConfig(deliver_policy=api.DeliverPolicy.ALL),
        pending_msgs_limit=settings.read_pending_messages_max,
        pending_bytes_limit=settings.read_pending_bytes_max,
    )  # fmt: skip
    try:
        await asyncio.wait_for(done, READ_TIMEOUT_S)
    finally:
        consumer = subscription._consumer  # deleted now, as JetStreamEventLog.read does
        await subscription.unsubscribe()
        await js._nc.publish(f"{js._prefix}.CONSUMER.DELETE.{HISTORY_STREAM}.{consumer}")


def fold_in_memory(messages: list[Message]) -> float:
    """Events/s of decode+fold of the same bytes with no I/O: the ceiling of one thread."""
    payloads = encoded(messages)
    started = time.perf_counter()
    state = INITIAL_STATE
    for data in payloads:
        for event in decode_decision(data).events:
            state = evolve(state, event)
    return events_in(messages) / (time.perf_counter() - started)


async def best(repeats: int, work: Callable[[], Awaitable[object]]) -> float:
    fastest = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        await work()
        fastest = min(fastest, time.perf_counter() - started)
    return fastest


async def gather_bounded(works: Sequence[Callable[[], Awaitable[object]]], limit: int) -> None:
    slots = asyncio.Semaphore(limit)

    async def one(work: Callable[[], Awaitable[object]]) -> None:
        async with slots:
            await work()

    await asyncio.gather(*(one(work) for work in works))


async def measure(connection: Connection) -> dict[str, object]:
    js = connection.js
    engine = Engine(connection.history, connection.tasks, connection.timers, connection.commands)
    long_messages = build_long_run("long")
    long_events = events_in(long_messages)
    await publish(js, "long", encoded(long_messages))
    small = {
        f"small-{i}": build_run(small_chain(), f"small-{i}", 1_000 * i) for i in range(SMALL_RUNS)
    }
    for run_id, messages in small.items():
        await publish(js, run_id, encoded(messages))
    small_events = sum(events_in(messages) for messages in small.values())

    async def fold_long() -> None:
        loaded = await engine.fold_history("long")
        assert loaded.state.event_count == long_events, loaded.state.event_count

    async def read_long() -> None:
        count = 0
        async for _ in connection.history.read("long"):
            count += 1
        assert count == len(long_messages), count

    async def bare_long() -> None:
        await bare_read(js, history_subject("long"), len(long_messages))

    async def fold_small() -> None:
        works = [functools.partial(engine.fold_history, run_id) for run_id in small]
        await gather_bounded(works, SMALL_CONCURRENCY)

    async def bare_small() -> None:
        works = [
            functools.partial(bare_read, js, history_subject(run_id), len(messages))
            for run_id, messages in small.items()
        ]
        await gather_bounded(works, SMALL_CONCURRENCY)

    await fold_long()  # warm up both paths once
    await bare_long()
    long_fold_s = await best(REPEATS, fold_long)
    long_bare_s = await best(REPEATS, bare_long)
    long_read_s = await best(REPEATS, read_long)
    small_fold_s = await best(REPEATS, fold_small)
    small_bare_s = await best(REPEATS, bare_small)
    long_rate = long_events / long_fold_s
    small_rate = small_events / small_fold_s
    return {
        "bench": "replay",
        "value": round(long_rate),
        "unit": "events/s",
        "ratio": round(long_rate / (long_events / long_bare_s), 4),
        "long_events": long_events,
        "long_messages": len(long_messages),
        "long_bare_events_per_s": round(long_events / long_bare_s),
        "long_log_read_only_events_per_s": round(long_events / long_read_s),
        "long_fold_in_memory_events_per_s": round(fold_in_memory(long_messages)),
        "small_runs": SMALL_RUNS,
        "small_events": small_events,
        "small_events_per_s": round(small_rate),
        "small_ratio": round(small_rate / (small_events / small_bare_s), 4),
        "small_bare_events_per_s": round(small_events / small_bare_s),
        "targets": "value >= 150000, ratio >= 0.9",
    }


async def main() -> dict[str, object]:
    async with bench_server("replay") as bench:
        result = await measure(bench.connection)
    print(json.dumps(result, separators=(",", ":")), flush=True)
    return result


if __name__ == "__main__":
    asyncio.run(main())
