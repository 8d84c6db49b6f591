"""Debounced bursts kept in NATS: the trigger-state bucket holds each pending burst (trigger,
key, first fire, last input, first and last fire times) under `debounce.<trigger>.<key>`, so a
burst outlives the engine that saw its fires; every change is revision-checked.

- a fire creates its burst or replaces the pending one's input and last time (compare-and-set,
  retried up to `settings.debounce_update_attempts_max`); with `settings.debounce_keys_max`
  bursts pending, or no update won, it is not debounced: its run starts at once (no fire is
  ever dropped);
- a tick releases each burst whose time came: it claims it (`released`, revision-checked, so
  a fire that lands meanwhile makes the claim fail and the burst goes on), starts its run
  (run id from the trigger and the burst's first fire: idempotent), then deletes it at the
  claimed revision. An engine that dies between claim and delete leaves a claimed burst;
  whoever sees it next (a tick, or a fire on the same key) starts the same run again, which
  is the same run, and only then goes on.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable

import msgspec
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
    """The pending bursts of the trigger-state bucket (any number of engines at once)."""

    def __init__(
        self, js: JetStreamContext, state: Callable[[], Awaitable[KeyValue]], release: Release
    ) -> None:
        self.js = js
        self.state = state
        self.release = release
        self.pending = 0  # bursts seen at the last tick, plus those created since

    async def offer(self, trigger: str, key: str, fire: str, value: object, now_ms: int) -> bool:
        """Add a fire to its burst; False when it is not debounced (start its run at once)."""
        kv = await self.state()
        name = burst_name(trigger, key)
        for _ in range(settings.debounce_update_attempts_max):
            found = await _read(kv, name)
            if found is None:
                if self.pending >= settings.debounce_keys_max:
                    log.warning("triggers: %d bursts pending (debounce_keys_max); fire %s "
                                "starts at once", self.pending, fire)  # fmt: skip
                    return False
                with contextlib.suppress(nats.js.errors.KeyWrongLastSequenceError):
                    await kv.create(name, _encoded(offered(None, trigger, key, fire, value,
                                                           now_ms)))  # fmt: skip
                    self.pending += 1
                    return True
                continue
            burst, revision = found
            if burst.released and not await self.release(burst):
                return False  # its run cannot start now: neither can this one's (it says so)
            with contextlib.suppress(nats.js.errors.KeyWrongLastSequenceError):
                await kv.update(name, _encoded(offered(burst, trigger, key, fire, value, now_ms)),
                                last=revision)  # fmt: skip
                return True
        log.warning("triggers: fire %s lost %d races for its burst; it starts at once",
                    fire, settings.debounce_update_attempts_max)  # fmt: skip
        return False

    async def due(self, rules: dict[str, Debounce], now_ms: int) -> int:
        """Release every burst of `rules`' triggers whose time came (and every claimed one);
        the number whose run started. Bursts of other triggers are left to their service."""
        kv = await self.state()
        released = live = 0
        for name in await kv_keys(self.js, STATE_BUCKET, BURST_PREFIX):
            found = await _read(kv, name)  # None: a released burst's delete marker
            if found is None:
                continue
            live += 1
            burst, revision = found
            rule = rules.get(burst.trigger)
            if rule is None or not (burst.released or burst_due(rule, burst, now_ms)):
                continue
            if not burst.released:
                try:
                    revision = await kv.update(
                        name, _encoded(replace(burst, released=True)), last=revision
                    )
                except nats.js.errors.KeyWrongLastSequenceError:
                    continue  # a fire or another engine got there first: looked at next tick
            if not await self.release(burst):
                continue  # stays claimed: the next tick starts it
            released += 1
            with contextlib.suppress(nats.js.errors.KeyWrongLastSequenceError):
                await kv.delete(name, last=revision)
        self.pending = live - released
        return released
