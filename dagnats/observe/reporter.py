"""Serve's reporter: every `settings.status_interval_ms`, collect the facts (`status.collect`),
set the metrics' gauges from them and keep this engine's record in `dagnats_projections`
(what `dagnats status` reads). On stop, the record is removed.

A failed round is logged (once per outage) and tried again next interval: reporting never
stops the engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from pathlib import Path
from typing import Protocol

from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext

from dagnats.observe.hooks import EngineObserver
from dagnats.observe.metrics import Metrics
from dagnats.observe.status import (
    EngineRecord,
    Facts,
    collect,
    engine_id,
    publish_record,
    remove_record,
)
from dagnats.runtime.clock import now_ms
from dagnats.runtime.settings import status_interval_ms

log = logging.getLogger("dagnats.observe")


class CountedAdmission(Protocol):
    """What the reporter reads of the engine's admission (dagnats.runtime.admission)."""

    def all_counters(self) -> dict[str, int]: ...


class ObservedEngine(Protocol):
    """What the reporter reads of the engine (dagnats.runtime.engine.Engine)."""

    observer: EngineObserver
    parked: dict[str, str]
    needs_resume: set[str]
    counters: dict[str, int]

    @property
    def admission(self) -> CountedAdmission: ...

    def cached_runs(self) -> int: ...


class Reporter:
    """Refreshes the gauges and this engine's record (see the module docstring)."""

    def __init__(
        self,
        engine: ObservedEngine,
        metrics: Metrics,
        nc: NatsClient,
        js: JetStreamContext,
        *,
        url: str,
        sqlite_path: Path | None,
    ) -> None:
        self.engine = engine
        self.metrics = metrics
        self.nc = nc
        self.js = js
        self.url = url
        self.sqlite_path = sqlite_path
        self.engine_id = engine_id()
        self.started_at_ms = now_ms()
        self.last: Facts | None = None
        self._failing = False

    def record(self) -> EngineRecord:
        """This engine's record, now."""
        engine = self.engine
        at_ms = now_ms()
        return EngineRecord(
            engine_id=self.engine_id,
            host=socket.gethostname(),
            pid=os.getpid(),
            started_at_ms=self.started_at_ms,
            updated_at_ms=at_ms,
            cached_runs=engine.cached_runs(),
            parked=len(engine.parked),
            resume_pending=len(engine.needs_resume),
            counters={**engine.counters, **engine.admission.all_counters()},
            workers=engine.observer.workers_seen(at_ms),
        )

    async def report_once(self) -> Facts:
        """Collect, set the gauges, publish the record; the facts collected."""
        own = self.record()
        facts = await collect(self.nc, self.js, url=self.url, sqlite_path=self.sqlite_path, own=own)
        self.metrics.set_facts(facts)
        await publish_record(self.js, own)
        self.last = facts
        return facts

    async def run(self, stop: asyncio.Event) -> None:
        """Report every `status_interval_ms` until `stop`; then remove the record."""
        try:
            while not stop.is_set():
                try:
                    await self.report_once()
                    if self._failing:
                        log.info("status reporting works again")
                    self._failing = False
                except Exception as error:  # the connection logs outages; say it once here
                    if not self._failing:
                        log.warning("status reporting failed (retrying): %r", error)
                    self._failing = True
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), status_interval_ms / 1000)
        finally:
            await remove_record(self.js, self.engine_id)
