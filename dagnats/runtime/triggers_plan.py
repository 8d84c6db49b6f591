"""What triggers should do at a moment: cron fire times (in a time zone), which missed fires
run after downtime, debounced bursts, and the stable names of fires and runs.

Plain functions and one small class over integers; time comes in as an argument, so the
simulator and the tests drive them in virtual time. The shell (`triggers.py`) does the I/O.
"""

from __future__ import annotations

import hashlib
import zoneinfo
from datetime import UTC, datetime
from typing import Final

import msgspec
import msgspec.structs

from dagnats.runtime import settings
from kernel.cron import CronSchedule, next_fire_ms, parse_cron
from kernel.errors import Problem, WorkflowInvalidError
from kernel.workflow import WorkflowDef
from kernel.workflow.trigger_model import CronSource, Debounce, HasTriggers, triggers_of

HORIZON_MS: Final = 366 * 86_400_000 + 86_400_000  # a yearly expression fires within it
DST_STEPS_MAX: Final = 4  # wall times skipped or repeated by a zone change, looked past


class ZoneError(ValueError):
    """A time zone the zone database does not know."""


def zone_of(name: str) -> zoneinfo.ZoneInfo:
    """The zone named `name`.

    Raises:
        ZoneError: naming the zone and the rule.
    """
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as error:
        raise ZoneError(f"timezone {name!r} is not an IANA time zone name: {error}") from None


def zone_problems(workflow: HasTriggers) -> tuple[Problem, ...]:
    """A problem for each cron trigger whose time zone the zone database does not know (the
    kernel checks only the name's shape: the database is a file)."""
    found: list[Problem] = []
    for index, trigger in enumerate(triggers_of(workflow)):
        if trigger.cron is None:
            continue
        try:
            zone_of(trigger.cron.timezone)
        except ZoneError:
            found.append(Problem(
                path=f"triggers[{index}].cron.timezone", value=repr(trigger.cron.timezone),
                rule="must be a time zone the IANA database knows, such as 'UTC' or "
                "'Europe/Paris'",
            ))  # fmt: skip
    return tuple(found)


def check_zones(workflow: WorkflowDef) -> WorkflowDef:
    """`workflow` if every cron trigger's zone exists.

    Raises:
        WorkflowInvalidError: naming each unknown zone's field path.
    """
    problems = zone_problems(workflow)
    if problems:
        raise WorkflowInvalidError(problems, workflow=workflow.name)
    return workflow


def schedule_of(source: CronSource) -> CronSchedule:
    found = parse_cron(source.expression)
    assert not isinstance(found, str), f"validated at registration: {found}"
    return found


def _offset_ms(zone: zoneinfo.ZoneInfo, utc_ms: int) -> int:
    moment = datetime.fromtimestamp(utc_ms / 1000, UTC).astimezone(zone)
    offset = moment.utcoffset()
    return 0 if offset is None else int(offset.total_seconds() * 1000)


def _utc_of_wall(zone: zoneinfo.ZoneInfo, wall_ms: int) -> int:
    naive = datetime.fromtimestamp(wall_ms / 1000, UTC).replace(tzinfo=zone)
    return int(naive.timestamp() * 1000)


def next_fire(source: CronSource, after_ms: int) -> int | None:
    """The first fire time (UTC ms) strictly after `after_ms`, the expression read as wall
    time in the source's zone; None when nothing fires within a year."""
    schedule = schedule_of(source)
    if source.timezone == "UTC":
        return next_fire_ms(schedule, after_ms, HORIZON_MS)
    zone = zone_of(source.timezone)
    wall = after_ms + _offset_ms(zone, after_ms)
    for _ in range(DST_STEPS_MAX):
        found = next_fire_ms(schedule, wall, HORIZON_MS)
        if found is None:
            return None
        utc = _utc_of_wall(zone, found)
        if utc > after_ms:
            return utc
        wall = found  # a repeated wall time already passed: look further
    return None


def fires_between(source: CronSource, after_ms: int, until_ms: int) -> list[int]:
    """Fire times in (after_ms, until_ms], oldest first; at most `settings.cron_fires_scan_max`
    of the latest (a longer gap keeps only the newest)."""
    fires: list[int] = []
    at = after_ms
    for _ in range(settings.cron_fires_scan_max):
        found = next_fire(source, at)
        if found is None or found > until_ms:
            return fires
        fires.append(found)
        at = found
    return fires[-settings.cron_fires_scan_max :]


def fires_to_run(source: CronSource, last_ms: int, now_ms: int) -> tuple[list[int], int]:
    """(fires to run now, fires skipped) for a trigger last advanced at `last_ms`.

    A fire due within `settings.cron_late_ms` runs; older ones were missed while no engine
    ran: the newest `backfill` of them run, the rest are skipped."""
    due = fires_between(source, last_ms, now_ms)
    on_time = [fire for fire in due if now_ms - fire <= settings.cron_late_ms]
    missed = due[: len(due) - len(on_time)]
    kept = missed[max(0, len(missed) - source.backfill) :] if source.backfill else []
    assert len(kept) <= source.backfill
    return kept + on_time, len(missed) - len(kept)


def digest(*parts: str) -> str:
    """A short stable name of `parts` (subject-token safe)."""
    joined = "\x1f".join(parts).encode()
    return hashlib.sha256(joined).hexdigest()[:20]


def trigger_key(workflow: str, trigger_id: str) -> str:
    """A trigger's key in KV and subjects: `<digest>` of its workflow and id."""
    return digest(workflow, trigger_id)


def fire_run_id(workflow: str, trigger_id: str, fire: str) -> str:
    """The run id of one fire: the same fire (cron time, message id) is the same run."""
    return f"trg-{digest(workflow, trigger_id, fire)}"


def cron_fire_name(fire_ms: int) -> str:
    """A fire time as RFC 3339 (ms, UTC): how cron fires are named in records."""
    moment = datetime.fromtimestamp(fire_ms / 1000, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{fire_ms % 1000:03d}Z"


STATE_BUCKET: Final = "dagnats_trigger_state"  # fire dedup, cron marks, debounced bursts
TRIGGERS_BUCKET: Final = "dagnats_triggers"  # managed triggers (added by CLI or HTTP)
BURST_PREFIX: Final = "debounce"  # pending bursts' keys in the trigger-state bucket


class Burst(msgspec.Struct, frozen=True, kw_only=True):
    """A debounced burst of one (trigger, key): kept in the trigger-state bucket, so it
    outlives the engine that saw its fires. `released`: an engine claimed it and is starting
    its run (whoever sees it so finishes that start, which is idempotent). `started_ms`: its
    run started then; it is kept `settings.debounce_done_kept_ms` more, so a fire delivered
    again (an ack lost in a crash) is known and starts no second burst."""

    trigger: str  # the trigger's key (`trigger_key`)
    key: str  # the burst's key (`debounce_key`)
    fire: str  # the first fire's name: the run's id comes from it
    last_fire: str = ""  # the last fire's name (bursts written before `fires`)
    fires: tuple[str, ...] = ()  # the newest `debounce_fires_remembered_max` fires' names
    first_ms: int
    last_ms: int
    input: object  # the last fire's input
    released: bool = False
    started_ms: int = 0  # 0: not started yet
    workflow: str = ""  # the trigger's workflow and id, for the record of a dropped burst
    trigger_id: str = ""
    timeout_ms: int = 0  # the rule's timeout (else period) when made: a burst whose trigger
    # is gone (or disabled) that long is dropped


def new_burst(trigger: str, key: str, fire: str, value: object, now_ms: int, *,
              workflow: str = "", trigger_id: str = "", timeout_ms: int = 0) -> Burst:  # fmt: skip
    """The burst of one fire."""
    return Burst(trigger=trigger, key=key, fire=fire, last_fire=fire, fires=(fire,),
                 first_ms=now_ms, last_ms=now_ms, input=value, workflow=workflow,
                 trigger_id=trigger_id, timeout_ms=timeout_ms)  # fmt: skip


def burst_name(trigger: str, key: str) -> str:
    """The bucket key of the burst of (trigger, key): `debounce.<trigger key>.<digest>`."""
    return f"{BURST_PREFIX}.{trigger}.{digest(key)}"


def seen(burst: Burst, fire: str) -> bool:
    """Whether `fire` was offered to `burst` already (a message delivered again)."""
    return fire in (burst.fire, burst.last_fire) or fire in burst.fires


def offered(burst: Burst | None, fresh: Burst) -> Burst | None:
    """The burst after a fire (`fresh`: the burst of that fire alone): None when the fire is
    no news (offered to this burst already); `fresh` when none is pending (or the pending one
    was claimed or started); else the pending one with this fire's input and time."""
    assert len(fresh.fires) == 1, "a fresh burst holds its one fire"
    if burst is not None and seen(burst, fresh.fire):
        return None
    if burst is None:
        return fresh
    if burst.released or burst.started_ms:  # a new burst, still knowing the last one's fires
        known = (*burst.fires, fresh.fire)[-settings.debounce_fires_remembered_max :]
        return msgspec.structs.replace(fresh, fires=known)
    fires = (*burst.fires, fresh.fire)[-settings.debounce_fires_remembered_max :]
    return msgspec.structs.replace(burst, last_fire=fresh.fire, fires=fires,
                                   last_ms=max(burst.last_ms, fresh.last_ms),
                                   input=fresh.input)  # fmt: skip


def burst_due(rule: Debounce, burst: Burst, now_ms: int) -> bool:
    """Whether the burst's run starts now: `period` quiet after its last fire, or `timeout`
    after its first (when a timeout is set)."""
    quiet = now_ms - burst.last_ms >= rule.period_ms
    late = bool(rule.timeout_ms) and now_ms - burst.first_ms >= rule.timeout_ms
    return quiet or late


def debounce_key(rule: Debounce, value: object) -> str:
    """The burst a fire belongs to: the value at the rule's key path ("" = one burst)."""
    if not rule.key:
        return ""
    current = value
    for part in rule.key.split("."):
        current = current.get(part) if isinstance(current, dict) else None
    return msgspec.json.encode(current).decode()
