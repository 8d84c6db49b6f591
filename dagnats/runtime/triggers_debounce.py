"""Debounced bursts kept in NATS: the trigger-state bucket holds each burst (trigger, key,
first fire, the fires offered, last input, first and last fire times) under
`debounce.<trigger>.<key>`, so a burst outlives the engine that saw its fires; every change
is revision-checked.

- a fire creates its burst or replaces the pending one's input and last time (compare-and-set,
  retried up to `settings.debounce_update_attempts_max`); with `settings.debounce_keys_max`
  bursts held (pending, or started and still remembered), or no update won, it is not
  debounced: its run starts at once (no fire is ever dropped). A fire the burst holds
  already is no news: a subject message comes again when its ack was lost, and nats-server
  writes a consumer's acks lazily, so a SIGKILL can lose acks of messages taken well before
  it (all of a burst's, not only the last);
- a tick releases each burst whose time came: it claims it (`released`, revision-checked, so
  a fire that lands meanwhile makes the claim fail and the burst goes on), starts its run
  (run id from the trigger and the burst's first fire: idempotent), then marks it started at
  the claimed revision. An engine that dies between claim and mark leaves a claimed burst;
  whoever sees it next (a tick, or a fire on the same key) starts the same run again, which
  is the same run, and only then goes on. A started burst is kept
  `settings.debounce_done_kept_ms` (fires delivered again are known), then deleted, and its
  delete marker purged from the bucket's stream (the purge keeps any later message, so a
  burst made meanwhile stays);
- a burst whose trigger is gone (deleted, disabled, or its workflow unregistered) for its
  timeout is dropped, with a log line and a fire record saying why.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable

import msgspec
import nats.errors
import nats.js.errors
from msgspec.structs import replace
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from dagnats.runtime import settings
from dagnats.runtime.kv_keys import kv_keys
from dagnats.runtime.triggers_plan import (
    BURST_PREFIX,
    STATE_BUCKET,
    Burst,
    burst_due,
    burst_name,
    offered,
)
from kernel.workflow.trigger_model import Debounce

log = logging.getLogger("dagnats.triggers")

Release = Callable[[Burst], Awaitable[bool]]  # start the burst's run: True when it started
Drop = Callable[[Burst, str], Awaitable[None]]  # record a burst dropped, with the reason


def _encoded(burst: Burst) -> bytes:
    return msgspec.json.encode(burst)


async def _read(kv: KeyValue, name: str) -> tuple[Burst, int] | None:
    try:
        found = await kv.get(name)
    except nats.js.errors.KeyNotFoundError:
        return None
    if not found.value:
        return None
    try:
        return msgspec.json.decode(found.value, type=Burst), found.revision or 0
    except msgspec.DecodeError:
        log.warning("triggers: burst %s is not readable; dropped", name)
        with contextlib.suppress(nats.js.errors.KeyWrongLastSequenceError):
            await kv.delete(name, last=found.revision)
        return None


class Bursts:
    """The bursts of the trigger-state bucket (any number of engines at once)."""

    def __init__(
        self, js: JetStreamContext, state: Callable[[], Awaitable[KeyValue]], release: Release,
        drop: Drop,
    ) -> None:  # fmt: skip
        self.js = js
        self.state = state
        self.release = release
        self.drop = drop
        self.pending = 0  # bursts held at the last tick (started ones too), plus those made since
        self.gone_since: dict[str, int] = {}  # trigger key -> when a tick first missed it

    async def offer(self, fresh: Burst) -> bool:
        """Add a fire (`fresh`: the burst of that fire alone) to its burst; False when it is
        not debounced (start its run at once). A fire the burst holds already is held."""
        kv = await self.state()
        name = burst_name(fresh.trigger, fresh.key)
        for _ in range(settings.debounce_update_attempts_max):
            found = await _read(kv, name)
            if found is None:
                if self.pending >= settings.debounce_keys_max:
                    log.warning("triggers: %d bursts held (debounce_keys_max); fire %s "
                                "starts at once", self.pending, fresh.fire)  # fmt: skip
                    return False
                with contextlib.suppress(nats.js.errors.KeyWrongLastSequenceError):
                    await kv.create(name, _encoded(fresh))
                    self.pending += 1
                    return True
                continue
            burst, revision = found
            after = offered(burst, fresh)
            if after is None:
                log.info("triggers: fire %s is in its burst already (delivered again)",
                         fresh.fire)  # fmt: skip
                return True
            if burst.released and not burst.started_ms and not await self.release(burst):
                return False  # its run cannot start now: neither can this one's (it says so)
            with contextlib.suppress(nats.js.errors.KeyWrongLastSequenceError):
                await kv.update(name, _encoded(after), last=revision)
                return True
        log.warning("triggers: fire %s lost %d races for its burst; it starts at once",
                    fresh.fire, settings.debounce_update_attempts_max)  # fmt: skip
        return False

    async def due(
        self, rules: dict[str, Debounce | None], now_ms: int, why: dict[str, str] | None = None
    ) -> int:
        """Release every burst whose time came (and every claimed one); the number whose run
        started. `rules`: each live trigger's debounce (None: no longer debounced, released
        now); a burst of any other trigger is dropped once its trigger was missing for its
        timeout (`why`: the reason of a trigger known but disabled or unregistered)."""
        kv = await self.state()
        released = live = kept = 0
        missing: set[str] = set()
        for name in await kv_keys(self.js, STATE_BUCKET, BURST_PREFIX):
            found = await _read(kv, name)
            if found is None:  # a delete marker (purged when its burst was deleted)
                continue
            burst, revision = found
            if burst.started_ms:
                expired = now_ms - burst.started_ms >= settings.debounce_done_kept_ms
                if not (expired and await self._forget(kv, name, revision)):
                    kept += 1  # still remembered (fires delivered again are known)
                continue
            live += 1
            if burst.trigger not in rules:
                missing.add(burst.trigger)
                since = self.gone_since.setdefault(burst.trigger, now_ms)
                if now_ms - since >= (burst.timeout_ms or settings.debounce_done_kept_ms):
                    reason = (why or {}).get(burst.trigger, "trigger deleted")
                    if await self._forget(kv, name, revision):
                        live -= 1
                        log.warning("triggers: burst %s of fire %s dropped: %s", name,
                                    burst.fire, reason)  # fmt: skip
                        await self.drop(burst, reason)
                continue
            if await self._release(kv, name, burst, revision, rules[burst.trigger], now_ms):
                released += 1
        self.gone_since = {k: v for k, v in self.gone_since.items() if k in missing}
        # Every burst the bucket still holds counts against debounce_keys_max, those started
        # (now or before) and remembered for their redeliveries too: a bound on what is held.
        self.pending = live + kept
        return released

    async def _release(
        self, kv: KeyValue, name: str, burst: Burst, revision: int, rule: Debounce | None,
        now_ms: int,
    ) -> bool:  # fmt: skip
        """Claim, start and mark started a burst whose time came; True when its run started."""
        if not (burst.released or rule is None or burst_due(rule, burst, now_ms)):
            return False
        if not burst.released:
            try:
                revision = await kv.update(
                    name, _encoded(replace(burst, released=True)), last=revision
                )
            except nats.js.errors.KeyWrongLastSequenceError:
                return False  # a fire or another engine got there first: looked at next tick
        if not await self.release(burst):
            return False  # stays claimed: the next tick starts it
        done = replace(burst, released=True, started_ms=now_ms)
        with contextlib.suppress(nats.js.errors.KeyWrongLastSequenceError):
            await kv.update(name, _encoded(done), last=revision)
        return True

    async def _forget(self, kv: KeyValue, name: str, revision: int) -> bool:
        """Delete a burst at `revision`, then purge its delete marker; False when it changed."""
        try:
            await kv.delete(name, last=revision)
        except nats.js.errors.KeyWrongLastSequenceError:
            return False
        await purge_marker(self.js, name)
        return True


async def purge_marker(js: JetStreamContext, name: str) -> None:
    """Purge the delete marker of key `name` from the bucket's stream (a bucket of history 1
    keeps the marker for good). The purge keeps messages from the marker's sequence + 1 on,
    so a burst created since the delete stays; best effort (a marker left is read as none)."""
    stream, subject = f"KV_{STATE_BUCKET}", f"$KV.{STATE_BUCKET}.{name}"
    with contextlib.suppress(nats.errors.Error, TimeoutError):
        last = await js.get_last_msg(stream, subject)
        if (last.headers or {}).get("KV-Operation") in ("DEL", "PURGE") and last.seq:
            await js.purge_stream(stream, subject=subject, seq=last.seq + 1)
