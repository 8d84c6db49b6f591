"""Cron fires and debounce in virtual time, with crashes and restarts of the trigger service.

`simulate_cron(seed, ...)` runs `engines` real `TriggerService`s (unchanged: their `_cron`
and `tick`) over a memory trigger-state bucket with compare-and-set and a memory start log
deduplicated on the run id (what `start:<run id>` does on the commands stream). Virtual time
moves in seeded steps, with long spells where every engine is down; an engine dies at a
seeded point (before a start, after one, before or after the state's update) and comes back
as a fresh service. The oracle is written apart from the planner: the schedule is every
`PERIOD_MS` (`*/5 * * * *`), the fires of a window are multiples of it. Violations:

- a fire time started more than once (the start log counts each accepted start);
- a state update over (old, now] whose fires within `cron_late_ms` of now did not all run,
  or whose missed fires' newest `backfill` did not all run (a fire due during downtime runs
  per backfill);
- a run whose fire no tick was allowed to start (neither on time nor among the newest
  `backfill` missed of the state it read).

`simulate_debounce(seed, ...)` offers bursts of fires (random gaps, keys, inputs) to one real
service and ticks it; its oracle replays the same fires and ticks: each burst starts one run,
with the burst's last input, at the first tick `period` after its last fire or `timeout` after
its first, at the latest. The service restarts between steps (its bursts are kept in the
state bucket, so nothing changes), and with `tick_crash_rate` it also dies inside a tick (before
or after a start, the burst's claim or its delete); that oracle checks, after a last clean
tick, that the runs split each key's fires into bursts, each run with its burst's last input,
none started before it was due, no fire left without a run, no run id started with two inputs.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Final

import msgspec
import nats.js.errors
from nats.js import api

from dagnats.runtime import settings
from dagnats.runtime.triggers import Entry, TriggerService
from dagnats.runtime.triggers_plan import BURST_PREFIX, STATE_BUCKET, cron_fire_name, fire_run_id
from dagnats.sim.faults import SimulatedCrash
from kernel.workflow import WorkflowDef, parse_workflow
from kernel.workflow.trigger_model import CronSource, Debounce, SubjectSource, TriggerDef

PERIOD_MS: Final = 5 * 60_000
EXPRESSION: Final = "*/5 * * * *"
T0: Final = 1_924_992_000_000  # 2031-01-01T00:00:00Z, a multiple of PERIOD_MS
rounds_max: Final = 10_000
CRASH_POINTS: Final = ("before-start", "after-start", "before-update", "after-update")
WORKFLOW: Final = "sim_triggers"


@dataclass
class Report:
    """What one seed did and every rule it found broken."""

    seed: int
    runs: dict[str, object] = field(default_factory=dict)  # run id -> input (first start)
    crashes: int = 0
    ticks: int = 0
    violations: list[str] = field(default_factory=list)


class _Found(msgspec.Struct, frozen=True):
    value: bytes
    revision: int


class MemoryState:
    """The trigger-state bucket: get, create, update and delete with compare-and-set (one
    revision counter for the bucket, as a KV stream's sequence), and the cron state's
    reads and updates (for the oracle)."""

    def __init__(self) -> None:
        self.values: dict[str, _Found] = {}
        self.reads: list[tuple[int, int]] = []  # (state read, now)
        self.updates: list[tuple[int, int, int]] = []  # (old, new, now)
        self.now = 0
        self.revision = 0
        self.dice: _Dice | None = None

    async def get(self, key: str) -> _Found:
        found = self.values.get(key)
        if found is None:
            raise nats.js.errors.KeyNotFoundError
        if not key.startswith(BURST_PREFIX):
            self.reads.append((int(found.value), self.now))
        return found

    async def create(self, key: str, value: bytes) -> int:
        if key in self.values:
            raise nats.js.errors.KeyWrongLastSequenceError
        return self._put(key, value)

    async def update(self, key: str, value: bytes, last: int) -> int:
        self._maybe("before-update")
        found = self.values.get(key)
        if found is None or found.revision != last:
            raise nats.js.errors.KeyWrongLastSequenceError
        revision = self._put(key, value)
        if not key.startswith(BURST_PREFIX):
            self.updates.append((int(found.value), int(value), self.now))
        self._maybe("after-update")
        return revision

    async def delete(self, key: str, last: int) -> bool:
        self._maybe("before-update")
        found = self.values.get(key)
        if found is None or found.revision != last:
            raise nats.js.errors.KeyWrongLastSequenceError
        del self.values[key]
        self._maybe("after-update")
        return True

    def _put(self, key: str, value: bytes) -> int:
        self.revision += 1
        self.values[key] = _Found(value, self.revision)
        return self.revision

    def _maybe(self, point: str) -> None:
        if self.dice is not None:
            self.dice.maybe(point)


class _Dice:
    def __init__(self, rng: random.Random, rate: float) -> None:
        self.rng, self.rate, self.crashes = rng, rate, 0

    def maybe(self, point: str) -> None:
        if self.rng.random() < self.rate:
            self.crashes += 1
            raise SimulatedCrash("trigger-service", point)


class _Records:
    """The fire records' stream (the service publishes a record per fire), and the state
    bucket's stream info (its per-subject counts list the bucket's keys: runtime/kv_keys)."""

    def __init__(self, state: MemoryState) -> None:
        self.published: list[bytes] = []
        self.state = state

    async def publish(self, subject: str, data: bytes, headers: dict[str, str]) -> None:
        self.published.append(data)

    async def get_last_msg(self, stream: str, subject: str) -> api.RawStreamMsg:
        raise nats.js.errors.NotFoundError  # the memory bucket keeps no delete markers

    async def stream_info(self, name: str, subjects_filter: str) -> api.StreamInfo:
        assert name == f"KV_{STATE_BUCKET}" and subjects_filter.endswith(".>"), name
        head = subjects_filter.removesuffix(">")
        subjects = (f"$KV.{STATE_BUCKET}.{key}" for key in self.state.values)
        found = {subject: 1 for subject in subjects if subject.startswith(head)}
        state = api.StreamState(
            messages=len(found), bytes=0, first_seq=0, last_seq=0, consumer_count=0,
            subjects=found,
        )  # fmt: skip
        return api.StreamInfo(config=api.StreamConfig(name=name), state=state)


class StartLog:
    """Starts deduplicated on the run id; the count of accepted starts per run."""

    def __init__(self, dice: _Dice | None, now: MemoryState) -> None:
        self.runs: dict[str, object] = {}
        self.started_at: dict[str, int] = {}
        self.accepted: Counter[str] = Counter()
        self.conflicts: list[str] = []  # run ids started again with another input
        self.dice = dice
        self.armed = True  # crashes happen only while armed
        self.clock = now

    async def __call__(self, workflow: WorkflowDef, value: object, run_id: str) -> object:
        if self.dice is not None and self.armed:
            self.dice.maybe("before-start")
        if run_id not in self.runs:
            self.runs[run_id] = value
            self.started_at[run_id] = self.clock.now
            self.accepted[run_id] += 1
        elif self.runs[run_id] != value:
            self.conflicts.append(run_id)
        if self.dice is not None and self.armed:
            self.dice.maybe("after-start")
        return run_id


def _workflow() -> WorkflowDef:
    return parse_workflow(
        {"name": WORKFLOW, "steps": [{"id": "nap", "type": "sleep", "config": {"duration": "1s"}}]}
    )


def _service(state: MemoryState, start: StartLog, entry: Entry) -> TriggerService:
    service = TriggerService(_Records(state), start, clock=lambda: state.now)  # type: ignore[arg-type]
    service._state = state  # type: ignore[assignment]
    service.entries = [entry]
    service.loaded = True
    return service


def simulate_cron(
    seed: int, *, engines: int = 2, backfill: int = 2, crash_rate: float = 0.05,
    rounds: int = 300,
) -> Report:  # fmt: skip
    """One seed of cron ticks by racing, crashing engines (see the module's docstring)."""
    return asyncio.run(_cron(seed, engines, backfill, crash_rate, rounds))


async def _cron(seed: int, engines: int, backfill: int, crash_rate: float, rounds: int) -> Report:
    assert 1 <= engines <= 8 and 0 <= rounds <= rounds_max and 0.0 <= crash_rate < 1.0
    rng = random.Random(seed)
    trigger = TriggerDef(id="cron", cron=CronSource(expression=EXPRESSION, backfill=backfill))
    entry = Entry(workflow_name=WORKFLOW, workflow=_workflow(), trigger=trigger)
    state, dice = MemoryState(), _Dice(rng, crash_rate)
    state.dice, state.now = dice, T0 + rng.randrange(PERIOD_MS)
    starts = StartLog(dice, state)
    services: list[TriggerService | None] = [_service(state, starts, entry) for _ in range(engines)]
    report = Report(seed=seed)
    for _ in range(rounds):
        state.now += _step(rng)
        index = rng.randrange(engines)
        service = services[index]
        if service is None:  # down: it comes back as a fresh process, or stays down
            if rng.random() < 0.5:
                services[index] = _service(state, starts, entry)
            continue
        report.ticks += 1
        try:
            await service.tick()
        except SimulatedCrash:
            services[index] = None
    state.dice = starts.dice = None  # a last clean tick settles the state
    await _service(state, starts, entry).tick()
    report.crashes, report.runs = dice.crashes, starts.runs
    report.violations = cron_violations(state, starts, backfill)
    return report


def _step(rng: random.Random) -> int:
    """Virtual time between two rounds: mostly a tick, sometimes a long spell of downtime."""
    if rng.random() < 0.05:
        return rng.randrange(PERIOD_MS, 12 * PERIOD_MS)
    return rng.randrange(settings.trigger_tick_ms, 3 * settings.trigger_tick_ms + PERIOD_MS // 4)


def _fires(after: int, until: int) -> list[int]:
    """The oracle's fire times in (after, until]: the multiples of PERIOD_MS."""
    first = (after // PERIOD_MS + 1) * PERIOD_MS
    return list(range(first, until + 1, PERIOD_MS))


def _allowed(last: int, now: int, backfill: int) -> tuple[set[int], set[int]]:
    """(must run, may run) for a tick that read `last` at `now`."""
    due = _fires(last, now)
    on_time = [fire for fire in due if now - fire <= settings.cron_late_ms]
    missed = [fire for fire in due if now - fire > settings.cron_late_ms]
    kept = missed[max(0, len(missed) - backfill) :] if backfill else []
    return set(on_time) | set(kept), set(on_time) | set(kept)


def cron_violations(state: MemoryState, starts: StartLog, backfill: int) -> list[str]:
    found: list[str] = []
    for run_id, count in starts.accepted.items():
        if count > 1:
            found.append(f"run {run_id} started {count} times")
    ran = set(starts.runs)
    name = {fire_run_id(WORKFLOW, "cron", cron_fire_name(f)): f for f in _fires(T0, state.now)}
    may: set[int] = set()
    for last, now in state.reads:
        may |= _allowed(last, now, backfill)[1]
    for old, _, now in state.updates:
        for fire in sorted(_allowed(old, now, backfill)[0]):
            if fire_run_id(WORKFLOW, "cron", cron_fire_name(fire)) not in ran:
                found.append(f"fire {cron_fire_name(fire)} due in ({old}, {now}] never ran")
    for run_id in ran:
        fired = name.get(run_id)
        if fired is None:
            found.append(f"run {run_id} is no fire time of the schedule")
        elif fired not in may:
            found.append(f"run of fire {cron_fire_name(fired)} that no tick was allowed to start")
    return found


def simulate_debounce(
    seed: int, *, period_ms: int = 5_000, timeout_ms: int = 20_000, crash_rate: float = 0.02,
    tick_crash_rate: float = 0.0, rounds: int = 400,
) -> Report:  # fmt: skip
    """One seed of debounced bursts (see the module's docstring)."""
    return asyncio.run(_debounce(seed, period_ms, timeout_ms, crash_rate, tick_crash_rate,
                                 rounds))  # fmt: skip


async def _debounce(
    seed: int, period_ms: int, timeout_ms: int, crash_rate: float, tick_crash_rate: float,
    rounds: int,
) -> Report:  # fmt: skip
    assert period_ms > 0 and timeout_ms >= 0 and 0 <= rounds <= rounds_max
    rng = random.Random(seed)
    rule = Debounce(period_ms=period_ms, timeout_ms=timeout_ms, key="user")
    trigger = TriggerDef(id="burst", subject=SubjectSource(subject="sim.burst"), debounce=rule)
    entry = Entry(workflow_name=WORKFLOW, workflow=_workflow(), trigger=trigger)
    state, dice = MemoryState(), _Dice(rng, tick_crash_rate)
    state.now = T0
    starts = StartLog(dice, state)
    starts.armed = False
    service = _service(state, starts, entry)
    report = Report(seed=seed)
    events: list[tuple[str, int, str, str, object]] = []  # (kind, at, fire, key, input)
    for number in range(rounds):
        state.now += rng.choice(
            (rng.randrange(1, period_ms), rng.randrange(period_ms, 4 * period_ms))
        )
        if rng.random() < crash_rate:  # the service dies between two steps and comes back
            report.crashes += 1
            service = _service(state, starts, entry)
        elif rng.random() < 0.6:
            user = rng.choice(("ann", "bob", "cy"))
            value = {"user": user, "n": number}
            fire = f"m{number}"
            await service.fire(entry, fire, value)
            events.append(("fire", state.now, fire, user, value))
        else:
            report.ticks += 1
            kind = await _tick(service, state, starts, dice)
            if kind == "crashed":
                report.crashes += 1
                service = _service(state, starts, entry)
            events.append((kind, state.now, "", "", None))
    state.now += period_ms + timeout_ms  # a last clean tick releases every burst left
    await _service(state, starts, entry).tick()
    events.append(("tick", state.now, "", "", None))
    report.runs = starts.runs
    report.violations = burst_violations(events, starts, rule)
    if not tick_crash_rate:  # with no crash inside a tick, each release is on the dot
        report.violations += debounce_violations(events, starts, rule)
    return report


async def _tick(service: TriggerService, state: MemoryState, starts: StartLog, dice: _Dice) -> str:
    """One tick, with crashes armed inside it (a fire never crashes: it is not retried)."""
    state.dice, starts.armed = dice, True
    try:
        await service.tick()
    except SimulatedCrash:
        return "crashed"
    finally:
        state.dice, starts.armed = None, False
    return "tick"


def burst_violations(
    events: list[tuple[str, int, str, str, object]], starts: StartLog, rule: Debounce
) -> list[str]:
    """Whatever crashed: the runs split each key's fires into bursts (a run per burst, named
    by its first fire), each run has its burst's last input, started no earlier than due and
    after its last fire, and one run id was never started with two inputs."""
    found = [f"run {run_id} started again with another input" for run_id in starts.conflicts]
    fires: dict[str, list[tuple[int, str, object]]] = {}
    for kind, at, fire, key, value in events:
        if kind == "fire":
            fires.setdefault(key, []).append((at, fire, value))
    named: set[str] = set()
    for key, sequence in fires.items():
        bursts: list[list[tuple[int, str, object]]] = []
        for item in sequence:
            if not bursts or fire_run_id(WORKFLOW, "burst", item[1]) in starts.runs:
                bursts.append([])
            bursts[-1].append(item)
        for burst in bursts:
            run_id = fire_run_id(WORKFLOW, "burst", burst[0][1])
            named.add(run_id)
            if run_id not in starts.runs:
                found.append(f"fires {[f for _, f, _ in burst]} of key {key} started no run")
                continue
            given, at = starts.runs[run_id], starts.started_at[run_id]
            if not isinstance(given, dict) or {k: given.get(k) for k in ("user", "n")} != burst[
                    -1][2]:  # fmt: skip
                found.append(f"burst {run_id} started with {given!r}, not {burst[-1][2]!r}")
            quiet = at - burst[-1][0] >= rule.period_ms
            late = bool(rule.timeout_ms) and at - burst[0][0] >= rule.timeout_ms
            if not (quiet or late) or at < burst[-1][0]:
                found.append(f"burst {run_id} started at {at}, before it was due")
    found.extend(f"run {r} is no burst's first fire" for r in set(starts.runs) - named)
    return found


def debounce_violations(
    events: list[tuple[str, int, str, str, object]], starts: StartLog, rule: Debounce
) -> list[str]:
    """Replay the fires and ticks apart from the debouncer: each burst one run, its last input,
    released at the first tick after quiet or timeout (restarts between steps change nothing:
    the bursts are kept in the state bucket)."""
    open_bursts: dict[str, tuple[int, int, str, object]] = {}  # key -> (first, last, fire, input)
    expected: dict[str, tuple[object, int]] = {}  # run id -> (input, released at)
    found: list[str] = []
    for kind, at, fire, key, value in events:
        if kind == "fire":
            burst = open_bursts.get(key)
            open_bursts[key] = (at, at, fire, value) if burst is None else (
                burst[0], at, burst[2], value)  # fmt: skip
        else:
            for name, (first, last, first_fire, last_input) in list(open_bursts.items()):
                quiet = at - last >= rule.period_ms
                late = bool(rule.timeout_ms) and at - first >= rule.timeout_ms
                if quiet or late:
                    del open_bursts[name]
                    expected[fire_run_id(WORKFLOW, "burst", first_fire)] = (last_input, at)
    for run_id, (last_input, at) in expected.items():
        if starts.runs.get(run_id, None) is None:
            found.append(f"burst {run_id} released at {at} started no run")
            continue
        given = starts.runs[run_id]
        if not isinstance(given, dict) or {k: given.get(k) for k in ("user", "n")} != last_input:
            found.append(
                f"burst {run_id} started with {given!r}, not its last input {last_input!r}"
            )
        if starts.started_at[run_id] != at:
            found.append(f"burst {run_id} started at {starts.started_at[run_id]}, not at {at}")
    for run_id in set(starts.runs) - set(expected):
        found.append(f"run {run_id} is no burst the replay released")
    return found


__all__ = [
    "Report",
    "burst_violations",
    "cron_violations",
    "debounce_violations",
    "simulate_cron",
    "simulate_debounce",
]
