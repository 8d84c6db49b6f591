"""Triggers in the serve process: cron schedules and NATS subjects start runs.

`TriggerService` reads the set of triggers (those declared in each registered workflow's
latest revision, overridden by those managed with `dagnats trigger`, bucket
`dagnats_triggers`), and:
- cron: every `settings.trigger_tick_ms` it runs the fires due since the trigger's last fire
  (bucket `dagnats_trigger_state`, advanced with compare-and-set). Each fire's run id comes
  from the trigger and the fire time, and its start is published under that id, so a fire
  runs at most once even with two engines or a crash between start and the state's update;
  fires due while no engine ran are missed, and the newest `backfill` of them run. The last
  fire advances only over fires whose start went out: a start that failed (NATS did not
  answer) is tried again at the next tick (a missed fire then, once `cron_late_ms` passed);
- subject: a durable JetStream consumer per trigger (on the stream the user names, or
  `DAGNATS_TRIGGER_IN`, which DagNats keeps covering every such subject), so a message
  published while serve was down still starts its run; one run per message, its run id from
  the message's id (`Nats-Msg-Id`, else stream and sequence), the message acked after.
- debounce: a fire of a trigger with `debounce` joins its burst, kept in the trigger-state
  bucket (`triggers_debounce.py`), so a burst survives a restart and is started once, by any
  engine, with its last input (run id from the trigger and the burst's first fire);
- manual fires (`dagnats trigger fire`, under any role) arrive as requests on
  `dagnats.trigger.fire.<trigger key>` and are fired here like any other
  (`triggers_requests.py`);
- every fire is recorded on `dagnats.fires.<trigger key>` (stream `DAGNATS_TRIGGER_FIRES`,
  deduplicated per fire), a fire for a missing workflow or a disabled trigger with its reason.
Runs started by a trigger carry the workflow without its triggers (no secrets in history).

Test seam: `$DAGNATS_TEST_CLOCK_OFFSET_MS` (an integer, default 0) is added to the trigger
service's clock when no clock is given, so end-to-end tests can put a real `dagnats serve`
hours ahead (cron fires due "while it was down") without waiting. Nothing else reads it; it
moves cron and debounce time only (runs, timers and history keep the real clock).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Final

import msgspec
import nats.errors
import nats.js.errors
from msgspec.structs import replace
from nats.js import api
from nats.js.client import JetStreamContext
from nats.js.kv import KeyValue

from dagnats.runtime import settings
from dagnats.runtime.clock import new_seed, now_ms
from dagnats.runtime.connection import Connection
from dagnats.runtime.kv_keys import kv_keys
from dagnats.runtime.resources import WORKFLOWS_BUCKET, check_run_id, decode_stored_workflow
from dagnats.runtime.triggers_debounce import Bursts
from dagnats.runtime.triggers_plan import (
    STATE_BUCKET,
    TRIGGERS_BUCKET,
    Burst,
    cron_fire_name,
    debounce_key,
    fire_run_id,
    fires_to_run,
    new_burst,
    trigger_key,
)
from dagnats.runtime.triggers_requests import FireRecord as FireRecord  # noqa: PLC0414 (exported)
from dagnats.runtime.triggers_requests import Outcome, serve_requests
from kernel import codec
from kernel.commands import StartRun
from kernel.workflow import WorkflowDef
from kernel.workflow.trigger_model import TriggerDef, triggers_of

log = logging.getLogger("dagnats.triggers")

FIRES_STREAM: Final = "DAGNATS_TRIGGER_FIRES"
FIRES_PREFIX: Final = "dagnats.fires"
INPUT_STREAM: Final = "DAGNATS_TRIGGER_IN"
CLOCK_OFFSET_ENV: Final = "DAGNATS_TEST_CLOCK_OFFSET_MS"  # a test seam (see the docstring)


class ManagedTrigger(msgspec.Struct, frozen=True, kw_only=True):
    """A trigger managed with `dagnats trigger` (bucket value): its workflow and definition;
    it overrides the workflow file's trigger of the same id."""

    workflow: str
    trigger: TriggerDef


class Entry(msgspec.Struct, frozen=True, kw_only=True):
    workflow_name: str
    workflow: WorkflowDef | None  # None: the workflow is not registered (fires are recorded)
    trigger: TriggerDef

    @property
    def key(self) -> str:
        return trigger_key(self.workflow_name, self.trigger.id)


Starter = Callable[[WorkflowDef, object, str], Awaitable[object]]


def service_clock(environ: dict[str, str] | None = None) -> Callable[[], int]:
    """The trigger service's clock: `now_ms`, moved by `$DAGNATS_TEST_CLOCK_OFFSET_MS` (a
    test seam: end-to-end tests of cron against a real serve, no real minute waited).

    Raises:
        ValueError: the variable is set and not an integer (naming it and its value).
    """
    text = (os.environ if environ is None else environ).get(CLOCK_OFFSET_ENV, "").strip()
    if not text:
        return now_ms
    try:
        offset = int(text)
    except ValueError:
        raise ValueError(f"${CLOCK_OFFSET_ENV} {text!r} must be an integer (ms)") from None
    log.warning("triggers: the clock is moved by %d ms ($%s, a test seam)", offset,
                CLOCK_OFFSET_ENV)  # fmt: skip
    return lambda: now_ms() + offset


def fires_subject(workflow: str, trigger_id: str) -> str:
    return f"{FIRES_PREFIX}.{trigger_key(workflow, trigger_id)}"


def managed_key(workflow: str, trigger_id: str) -> str:
    return f"{workflow}.{trigger_id}"


async def ensure_trigger_resources(js: JetStreamContext) -> None:
    """The fire records' stream and the triggers' buckets (idempotent)."""
    config = api.StreamConfig(
        name=FIRES_STREAM,
        subjects=[f"{FIRES_PREFIX}.>"],
        max_msgs_per_subject=settings.trigger_fires_kept_per_trigger,
        max_age=settings.trigger_fire_age_ms_max / 1000,
        duplicate_window=120.0,
    )
    try:
        await js.add_stream(config)
    except nats.js.errors.BadRequestError:
        await js.update_stream(config)
    for bucket in (STATE_BUCKET, TRIGGERS_BUCKET):
        with contextlib.suppress(nats.js.errors.BadRequestError):
            await js.create_key_value(bucket=bucket, history=1)


async def reach_trigger_resources(js: JetStreamContext) -> None:
    """A client's way to the trigger resources: serve made them at start, so they are looked
    up (one STREAM.INFO each) and made only when one is missing. A client role may not make
    them (nats-server answers nothing to a forbidden request, so it would wait out the
    request timeout on every call); then reads find nothing."""
    streams = (FIRES_STREAM, f"KV_{STATE_BUCKET}", f"KV_{TRIGGERS_BUCKET}")
    try:
        for name in streams:
            await js.stream_info(name)
        return
    except nats.js.errors.NotFoundError:
        pass
    with contextlib.suppress(nats.errors.Error):
        await ensure_trigger_resources(js)


async def load_entries(js: JetStreamContext) -> list[Entry]:
    """Every trigger: those of each registered workflow's latest revision, then the managed
    ones (which override a file's trigger of the same workflow and id)."""
    workflows: dict[str, WorkflowDef] = {}
    kv = await js.key_value(WORKFLOWS_BUCKET)
    for name in await kv_keys(js, WORKFLOWS_BUCKET):
        with contextlib.suppress(nats.js.errors.KeyNotFoundError, ValueError):
            entry = await kv.get(name)
            if entry.value:
                workflows[name] = decode_stored_workflow(name, entry.value, entry.revision)[0]
    entries: dict[tuple[str, str], Entry] = {}
    for name, workflow in workflows.items():
        for trigger in triggers_of(workflow):
            entries[(name, trigger.id)] = Entry(
                workflow_name=name, workflow=workflow, trigger=trigger
            )
    managed = await js.key_value(TRIGGERS_BUCKET)
    for key in await kv_keys(js, TRIGGERS_BUCKET):
        with contextlib.suppress(nats.js.errors.KeyNotFoundError, msgspec.DecodeError):
            found = await managed.get(key)
            if found.value:
                item = msgspec.json.decode(found.value, type=ManagedTrigger)
                entries[(item.workflow, item.trigger.id)] = Entry(
                    workflow_name=item.workflow,
                    workflow=workflows.get(item.workflow),
                    trigger=item.trigger,
                )
    return list(entries.values())


class TriggerService:
    """Runs cron and subject triggers until stopped (one per engine process; any number of
    engines may run it at once)."""

    def __init__(
        self,
        js: JetStreamContext,
        start: Starter,
        *,
        clock: Callable[[], int] | None = None,
        recording: bool = True,
    ) -> None:
        self.js = js
        self.recording = recording  # False: fire records are not published (a client may not)
        self.start = start  # (workflow, input, run_id) -> awaitable: publish the start
        self.clock = service_clock() if clock is None else clock
        self.entries: list[Entry] = []
        self.bursts = Bursts(js, self.state, self._release, self._dropped)
        self.loaded = False  # the set of triggers was read once (bursts are looked at then)
        self.consumers: dict[str, asyncio.Task[None]] = {}
        self._state: KeyValue | None = None

    async def run(self, stop: asyncio.Event) -> None:
        await ensure_trigger_resources(self.js)
        loaded_ms = -settings.trigger_reload_ms
        requests = asyncio.create_task(self._requests(stop))
        try:
            while not stop.is_set():
                if self.clock() - loaded_ms >= settings.trigger_reload_ms:
                    await self.reload()
                    loaded_ms = self.clock()
                await self.tick()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), settings.trigger_tick_ms / 1000)
        finally:
            for task in (requests, *self.consumers.values()):
                task.cancel()
            for task in (requests, *self.consumers.values()):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def _requests(self, stop: asyncio.Event) -> None:
        """Answer manual fire requests (`triggers_requests.py`) until stopped; started again
        after a failure (NATS away)."""
        while not stop.is_set():
            try:
                await serve_requests(self, stop)
            except (nats.errors.Error, TimeoutError) as error:
                log.warning("triggers: serving fire requests failed (%s); again soon", error)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), settings.retry_delay_ms / 1000)
            except Exception:  # never a silent end (manual fires would all time out): loud
                log.exception("triggers: serving fire requests broke; again soon")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), settings.retry_delay_ms / 1000)

    async def reload(self) -> None:
        """Read the triggers again; start a consumer for each new subject trigger."""
        try:
            self.entries = await load_entries(self.js)
        except (nats.errors.Error, TimeoutError) as error:
            log.warning("triggers: reading the set of triggers failed (%s); kept the last", error)
            return
        self.loaded = True
        subjects = [e for e in self.entries if e.trigger.subject is not None]
        await self._cover_subjects(subjects)
        live = {entry.key for entry in subjects if entry.trigger.enabled}
        for key in list(self.consumers):
            if key not in live:
                self.consumers.pop(key).cancel()
        for entry in subjects:
            running = self.consumers.get(entry.key)
            if running is not None and running.done() and not running.cancelled():
                log.warning("trigger %s: its consumer stopped (%r); started again",
                            entry.trigger.id, running.exception())  # fmt: skip
            if entry.trigger.enabled and (running is None or running.done()):
                self.consumers[entry.key] = asyncio.create_task(self._consume(entry))

    async def tick(self) -> None:
        """Run the cron fires due now and the debounced bursts whose time came."""
        now = self.clock()
        for entry in self.entries:
            if entry.trigger.cron is not None and entry.trigger.enabled:
                try:
                    await self._cron(entry, now)
                except (nats.errors.Error, TimeoutError) as error:
                    log.warning("trigger %s: cron tick failed (%s)", entry.trigger.id, error)
        if not self.loaded:
            return
        rules = {e.key: e.trigger.debounce for e in self.entries
                 if e.trigger.enabled and e.workflow is not None}  # fmt: skip
        why = {e.key: "trigger disabled" if not e.trigger.enabled else "workflow not registered"
               for e in self.entries if e.key not in rules}  # fmt: skip
        try:  # every tick, also with no debounced trigger left: bursts of gone ones drop
            await self.bursts.due(rules, now, why)
        except (nats.errors.Error, TimeoutError) as error:
            log.warning("triggers: releasing debounced bursts failed (%s)", error)

    async def _release(self, burst: Burst) -> bool:
        """Start a burst's run (its id from its first fire); True when it started."""
        found = next((e for e in self.entries if e.key == burst.trigger), None)
        if found is None or found.workflow is None:
            return False
        return (await self._start(found, burst.fire, burst.input)).outcome == "started"

    async def _dropped(self, burst: Burst, reason: str) -> None:
        """Record a burst dropped because its trigger is gone (bursts made before they named
        their workflow are only logged)."""
        if burst.workflow and burst.trigger_id:
            await self._publish_record(burst.workflow, burst.trigger_id, burst.fire, "",
                                       "dropped", reason)  # fmt: skip

    async def state(self) -> KeyValue:
        if self._state is None:
            self._state = await self.js.key_value(STATE_BUCKET)
        return self._state

    async def _cron(self, entry: Entry, now: int) -> None:
        cron = entry.trigger.cron
        assert cron is not None
        kv = await self.state()
        try:
            found = await kv.get(entry.key)
            last, revision = int(found.value or b"0"), found.revision
        except nats.js.errors.KeyNotFoundError:
            with contextlib.suppress(nats.js.errors.KeyWrongLastSequenceError):
                await kv.create(entry.key, str(now).encode())  # first seen: from now on
            return
        fires, skipped = fires_to_run(cron, last, now)
        if skipped:
            log.info("trigger %s: %d fires missed while down were skipped (backfill %d)",
                     entry.trigger.id, skipped, cron.backfill)  # fmt: skip
        newest = (fires[0] - 1) if fires else (now if skipped else last)  # (past the skipped)
        for fire_ms in fires:
            record = await self.fire(entry, cron_fire_name(fire_ms), {
                "fire_time": cron_fire_name(fire_ms), "fire_ms": fire_ms})  # fmt: skip
            if record.outcome == "failed":  # its start did not go out: again at the next tick
                break
            newest = fire_ms
        if newest > last:
            with contextlib.suppress(nats.js.errors.KeyWrongLastSequenceError):
                await kv.update(entry.key, str(newest).encode(), last=revision)

    async def fire(self, entry: Entry, fire: str, value: object) -> FireRecord:
        """One fire: recorded, debounced, or a run started (its id from the fire)."""
        trigger = entry.trigger
        if entry.workflow is None or not trigger.enabled:
            reason = "workflow not registered" if entry.workflow is None else "trigger disabled"
            return await self.record(entry, fire, "", "skipped", reason)
        if trigger.debounce is not None:
            key = debounce_key(trigger.debounce, value)
            fresh = new_burst(
                entry.key, key, fire, value, self.clock(), workflow=entry.workflow_name,
                trigger_id=trigger.id,
                timeout_ms=trigger.debounce.timeout_ms or trigger.debounce.period_ms,
            )  # fmt: skip
            try:
                held = await self.bursts.offer(fresh)
            except (nats.errors.Error, TimeoutError) as error:
                return await self.record(entry, fire, "", "failed", f"debounce: {error}"[:500])
            if held:
                return await self.record(entry, fire, "", "debounced", f"key {key or '(one)'}")
        return await self._start(entry, fire, value)

    async def _start(self, entry: Entry, fire: str, value: object) -> FireRecord:
        assert entry.workflow is not None
        run_id = fire_run_id(entry.workflow_name, entry.trigger.id, fire)
        workflow = replace(entry.workflow, triggers=msgspec.UNSET)
        try:
            given = {"trigger": entry.trigger.id, **_as_fields(value)}
            await self.start(workflow, given, run_id)
        except Exception as error:  # recorded with its reason; the engine goes on
            return await self.record(entry, fire, run_id, "failed", str(error)[:500])
        return await self.record(entry, fire, run_id, "started", "")

    async def record(
        self, entry: Entry, fire: str, run_id: str, outcome: Outcome, reason: str
    ) -> FireRecord:
        return await self._publish_record(entry.workflow_name, entry.trigger.id, fire, run_id,
                                          outcome, reason)  # fmt: skip

    async def _publish_record(
        self, workflow: str, trigger_id: str, fire: str, run_id: str, outcome: Outcome,
        reason: str,
    ) -> FireRecord:  # fmt: skip
        record = FireRecord(
            workflow=workflow, trigger_id=trigger_id, fire=fire, run_id=run_id,
            outcome=outcome, reason=reason, at_ms=self.clock(),
        )  # fmt: skip
        if not self.recording:
            return record
        subject = fires_subject(workflow, trigger_id)
        msg_id = f"{trigger_key(workflow, trigger_id)}:{fire}:{outcome}"
        with contextlib.suppress(nats.errors.Error, TimeoutError):
            await self.js.publish(subject, msgspec.json.encode(record), headers={
                "Nats-Msg-Id": msg_id})  # fmt: skip
        return record

    async def _cover_subjects(self, entries: list[Entry]) -> None:
        """Keep `DAGNATS_TRIGGER_IN` covering every subject trigger without a stream."""
        sources = [e.trigger.subject for e in entries if e.trigger.subject is not None]
        own = sorted({source.subject for source in sources if not source.stream})
        if not own:
            return
        config = api.StreamConfig(name=INPUT_STREAM, subjects=own, max_age=7 * 86_400.0)
        try:
            info = await self.js.stream_info(INPUT_STREAM)
            if sorted(info.config.subjects or []) != own:
                merged = sorted(set(info.config.subjects or []) | set(own))
                await self.js.update_stream(replace_subjects(config, merged))
        except nats.js.errors.NotFoundError:
            await self.js.add_stream(config)

    async def _consume(self, entry: Entry) -> None:
        source = entry.trigger.subject
        assert source is not None
        stream = source.stream or INPUT_STREAM
        durable = f"trg_{entry.key}"
        sub = await self.js.pull_subscribe(source.subject, durable=durable, stream=stream)
        while True:
            try:
                messages = await sub.fetch(settings.subject_fetch_batch, timeout=1.0)
            except (TimeoutError, nats.errors.TimeoutError):
                continue
            for message in messages:
                headers = message.headers or {}
                meta = message.metadata
                fire = headers.get("Nats-Msg-Id") or f"{stream}:{meta.sequence.stream}"
                record = await self.fire(entry, fire, {"subject": message.subject,
                                                       "data": _decoded(message.data)})  # fmt: skip
                if record.outcome == "failed":
                    await message.nak(delay=settings.retry_delay_ms / 1000)
                else:  # acked before the next is taken: only this one can come again
                    await message.ack_sync()


def replace_subjects(config: api.StreamConfig, subjects: list[str]) -> api.StreamConfig:
    config.subjects = subjects
    return config


def _decoded(data: bytes) -> object:
    try:
        return msgspec.json.decode(data)
    except msgspec.DecodeError:
        return data.decode("utf-8", "replace")


def _as_fields(value: object) -> dict[str, object]:
    return dict(value) if isinstance(value, dict) else {"input": value}


async def read_fires(
    js: JetStreamContext, workflow: str, trigger_id: str, limit: int
) -> list[FireRecord]:
    """The newest `limit` fire records of a trigger, oldest first (an ordered consumer, which
    a reader role may create: no pull from the records' stream)."""
    subject = fires_subject(workflow, trigger_id)
    try:
        last = await js.get_last_msg(FIRES_STREAM, subject)
    except nats.js.errors.NotFoundError:
        return []
    records: list[FireRecord] = []
    sub = await js.subscribe(subject, stream=FIRES_STREAM, ordered_consumer=True)
    try:
        for _ in range(settings.trigger_fires_kept_per_trigger + 1):
            try:
                message = await sub.next_msg(timeout=2.0)
            except (TimeoutError, nats.errors.TimeoutError):
                break
            records.append(msgspec.json.decode(message.data, type=FireRecord))
            if message.metadata.sequence.stream >= (last.seq or 0):
                break
    finally:
        with contextlib.suppress(nats.errors.Error):
            await sub.unsubscribe()
    return records[-limit:]


def command_starter(connection: Connection) -> Starter:
    """Start runs by publishing `StartRun` under `start:<run id>` (what `Client.start` does):
    the same fire published twice, by two engines or after a crash, is one run."""

    async def start(workflow: WorkflowDef, value: object, run_id: str) -> object:
        data = msgspec.json.encode(value)
        command = StartRun(
            run_id=check_run_id(run_id), at_ms=now_ms(), seed=new_seed(), workflow=workflow,
            input=msgspec.Raw(data),
        )  # fmt: skip
        await connection.commands.publish_command(run_id, codec.encode(command), f"start:{run_id}")
        return run_id

    return start
