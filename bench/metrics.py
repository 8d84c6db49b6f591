"""What every bench line carries beside its time: CPU per step of each process, and the
JetStream API requests and stored messages per step.

- CPU: utime + stime of a process (all its threads) from `/proc/<pid>/stat`, in ms; a sample
  before and after a workload, the delta divided by the steps. `cpu_ms_per_step` in a line is
  `{name: ms}` for each process named (e.g. serve, nats_server, worker, client) and `total`.
- JetStream: `api_requests` is the account's JetStream API request counter (`$JS.API.INFO`,
  the same counter the monitoring endpoint's `/jsz` reports as `api.total`); `stored_msgs` is
  the sum over every stream (KV buckets included) of its last sequence, i.e. every message
  ever stored, also those a work queue has since removed. Both are read over the client
  protocol, so they work on `dagnats serve`'s embedded server (which has no monitoring port);
  the bench's own reads are subtracted (`SNAPSHOT_API_REQUESTS`, checked against `/jsz` by
  `jsz` on a server the bench starts with a monitoring port).

This module only reads /proc and asks the server; it changes nothing.
"""

from __future__ import annotations

import asyncio
import json
import os
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from nats.js import JetStreamContext

CLOCK_TICKS_PER_S: Final = os.sysconf("SC_CLK_TCK")
STAT_UTIME_FIELD: Final = 13  # 0-based index of utime in /proc/<pid>/stat after the name
SNAPSHOT_API_REQUESTS: Final = 2  # one $JS.API.INFO and one $JS.API.STREAM.LIST per snapshot
JSZ_TIMEOUT_S: Final = 5.0


def cpu_ms(pid: int) -> float:
    """utime + stime of `pid` (every thread) in ms; 0.0 when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    except OSError:
        return 0.0
    fields = text.rsplit(")", 1)[1].split()  # the name may hold spaces; it ends with ")"
    utime, stime = int(fields[STAT_UTIME_FIELD - 2]), int(fields[STAT_UTIME_FIELD - 1])
    return (utime + stime) * 1000 / CLOCK_TICKS_PER_S


def children_of(pid: int) -> list[int]:
    """The direct children of `pid` (every thread's children file)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(child) for child in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


class CpuMeter:
    """CPU of named processes between `start()` and `per_step(steps)`."""

    def __init__(self, pids: Mapping[str, int]) -> None:
        self.pids = dict(pids)
        self._before: dict[str, float] = {}

    def start(self) -> None:
        self._before = {name: cpu_ms(pid) for name, pid in self.pids.items()}

    def per_step(self, steps: int) -> dict[str, float]:
        """ms of CPU per step of each process since start(), and their `total`."""
        assert steps > 0 and self._before, "start() first, and at least one step"
        spent = {name: cpu_ms(pid) - self._before[name] for name, pid in self.pids.items()}
        line = {name: round(ms / steps, 4) for name, ms in spent.items()}
        line["total"] = round(sum(spent.values()) / steps, 4)
        return line


@dataclass(frozen=True)
class JsCounters:
    api_requests: int
    stored_msgs: int


async def js_counters(js: JetStreamContext) -> JsCounters:
    """The account's JetStream API requests so far and the messages every stream stored."""
    info = await js.account_info()
    streams = await js.streams_info()
    stored = sum(stream.state.last_seq for stream in streams)
    return JsCounters(api_requests=info.api.total, stored_msgs=stored)


class JsMeter:
    """JetStream API requests and stored messages per step between start() and per_step()."""

    def __init__(self, js: JetStreamContext) -> None:
        self.js = js
        self._before: JsCounters | None = None

    async def start(self) -> None:
        self._before = await js_counters(self.js)

    async def per_step(self, steps: int) -> dict[str, float]:
        assert steps > 0 and self._before is not None, "start() first, and at least one step"
        after = await js_counters(self.js)
        requests = after.api_requests - self._before.api_requests - SNAPSHOT_API_REQUESTS
        stored = after.stored_msgs - self._before.stored_msgs
        return {
            "js_api_requests_per_step": round(requests / steps, 3),
            "stored_msgs_per_step": round(stored / steps, 3),
        }


def jsz(monitor_port: int) -> dict[str, object]:
    """`/jsz` of a nats-server started with `--http_port` (blocking; call in a thread)."""
    url = f"http://127.0.0.1:{monitor_port}/jsz"
    with urllib.request.urlopen(url, timeout=JSZ_TIMEOUT_S) as response:
        value = json.loads(response.read())
    assert isinstance(value, dict), value
    return value


async def jsz_api_total(monitor_port: int) -> int:
    """`api.total` from `/jsz`."""
    value = await asyncio.to_thread(jsz, monitor_port)
    api = value.get("api")
    assert isinstance(api, dict), value
    total = api.get("total")
    assert isinstance(total, int), api
    return total
