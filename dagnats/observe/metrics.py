"""Prometheus metrics of the serve process (prometheus-client), in a registry of their own.

Counters and histograms are fed by the engine's hooks (`hooks.EngineObserver`) as decisions
are appended; gauges (queue depths, projection lag, streams, workers, pending approvals) are
set from the facts `status.collect` gathers every `settings.status_interval_ms`. `render`
gives the Prometheus text format, for `/metrics` of the HTTP server and for
`dagnats serve --metrics ADDR` (prometheus-client's own small HTTP server, `serve_http`).

Counters count what this process decided since it started (Prometheus takes care of
restarts); they are not totals over the history. The counters and histograms the hooks feed
per command and per step are `Family` collectors of this module: their series are plain lists
(prometheus-client's own take a lock per value and scan their buckets in Python per call: 3 us
a decision, 10 us a step's attempt measured here), rendered as prometheus-client renders its
`Counter` and `Histogram` (same names, help, buckets, labels, `_created` samples).
"""

from __future__ import annotations

import bisect
import math
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Final, cast

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Gauge,
    generate_latest,
    start_http_server,
)
from prometheus_client import metrics as prometheus_metrics
from prometheus_client.metrics_core import Metric
from prometheus_client.utils import floatToGoString

from dagnats.runtime.settings import metric_children_cached_max

if TYPE_CHECKING:
    from dagnats.observe.status import Facts

CONTENT_TYPE: Final = CONTENT_TYPE_LATEST
DEFAULT_HOST: Final = "127.0.0.1"
PORT_MAX: Final = 65_535
metrics_server_stop_s: Final = 5.0
# Steps run from milliseconds (a cached lookup) to hours (an agent's long tool call).
STEP_SECONDS_BUCKETS: Final = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600, 21600,
)  # fmt: skip
DECISION_SECONDS_BUCKETS: Final = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5,
)  # fmt: skip


_go_float = cast(Callable[[float], str], floatToGoString)  # (as prometheus-client writes `le`)
Series = list[float]  # a counter's [total, created]; a histogram's [*buckets, sum, created]


class Family:
    """A labelled counter (`buckets` None) or histogram fed from the event loop, collected by
    the registry: each label values' series is a plain list (see the module doc)."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        registry: CollectorRegistry,
        buckets: Sequence[float] | None = None,
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self.kind = "counter" if buckets is None else "histogram"
        self.bounds = () if buckets is None else (*(float(b) for b in buckets), math.inf)
        assert list(self.bounds) == sorted(set(self.bounds)), self.bounds
        self.les = tuple(_go_float(bound) for bound in self.bounds)  # (each bucket's `le`)
        self.series: dict[tuple[str, ...], Series] = {}  # label values -> series
        registry.register(self)

    def new_series(self, values: tuple[str, ...]) -> Series:
        """The series of `values` (made, with its creation time, when missing)."""
        series = self.series.get(values)
        if series is None:
            assert len(values) == len(self.labelnames), (values, self.labelnames)
            series = [0.0] * (len(self.bounds) + 1 if self.bounds else 1) + [time.time()]
            self.series[values] = series
        return series

    def describe(self) -> list[Metric]:
        return [Metric(self.name, self.documentation, self.kind)]

    def collect(self) -> list[Metric]:
        """The family as prometheus-client's Counter or Histogram collects it."""
        metric = Metric(self.name, self.documentation, self.kind)
        created = getattr(prometheus_metrics, "_use_created", True)
        name = self.name
        for values, kept in list(self.series.items()):
            labels = dict(zip(self.labelnames, values, strict=True))
            series = list(kept)  # (a copy: the loop may feed it while a thread renders)
            if not self.bounds:
                metric.add_sample(f"{name}_total", labels, series[0])
            else:
                total = 0.0
                for le, count in zip(self.les, series, strict=False):
                    total += count
                    metric.add_sample(f"{name}_bucket", {**labels, "le": le}, total)
                metric.add_sample(f"{name}_count", labels, total)
                metric.add_sample(f"{name}_sum", labels, series[-2])
            if created:
                metric.add_sample(f"{name}_created", labels, series[-1])
        return [metric]


class Metrics:
    """The metrics of one serve process (one registry: tests make as many as they like)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.runs_started = Family(
            "dagnats_runs_started", "Runs started, by workflow.", ["workflow"], r
        )
        self.runs_finished = Family(
            "dagnats_runs_finished", "Runs that ended, by workflow and final status.",
            ["workflow", "status"], r,
        )  # fmt: skip
        self.step_attempts = Family(
            "dagnats_step_attempts", "Step attempts that ended, by task type and outcome "
            "(completed, failed, timed_out, lost).", ["task", "outcome"], r,
        )  # fmt: skip
        self.step_seconds = Family(
            "dagnats_step_duration_seconds", "Step attempts from scheduled to ended, by task "
            "type.", ["task"], r, buckets=STEP_SECONDS_BUCKETS,
        )  # fmt: skip
        self.decision_seconds = Family(
            "dagnats_engine_decision_seconds", "One command decided, appended and its effects "
            "run, by outcome (applied, ignored, rejected, dead, parked, retry).",
            ["outcome"], r, buckets=DECISION_SECONDS_BUCKETS,
        )  # fmt: skip
        self.queue_depth = Gauge(
            "dagnats_queue_depth", "Messages waiting or in flight in a work queue: each task "
            "type's, and the engine's commands.", ["queue"], registry=r,
        )  # fmt: skip
        self.projection_position = Gauge(
            "dagnats_projection_position", "The history sequence a projection has applied.",
            ["projection"], registry=r,
        )  # fmt: skip
        self.projection_lag = Gauge(
            "dagnats_projection_lag", "History messages a projection is behind the stream.",
            ["projection"], registry=r,
        )  # fmt: skip
        self.stream_messages = Gauge(
            "dagnats_stream_messages", "Messages in a stream.", ["stream"], registry=r
        )
        self.stream_bytes = Gauge(
            "dagnats_stream_bytes", "Bytes in a stream.", ["stream"], registry=r
        )
        self.approvals_pending = Gauge(
            "dagnats_approvals_pending", "Approvals asked and not resolved, of runs not ended "
            "(from the query tables).", registry=r,
        )  # fmt: skip
        self.workers = Gauge(
            "dagnats_workers", "Workers that started an attempt within the last "
            "settings.workers_seen_window_ms.", registry=r,
        )  # fmt: skip
        self.runs_parked = Gauge(
            "dagnats_runs_parked", "Runs the engine parked (a broken invariant).", registry=r
        )

        # The series the engine's hooks feed, by (family, *label values), kept at hand (one
        # dict lookup per call); at most metric_children_cached_max (past it, each is found
        # in its family: still counted).
        self._children: dict[tuple[object, ...], Series] = {}

    def run_started(self, workflow: str) -> None:
        _series(self._children, self.runs_started, workflow)[0] += 1

    def run_finished(self, workflow: str, status: str) -> None:
        _series(self._children, self.runs_finished, workflow, status)[0] += 1

    def attempt_ended(self, task: str, outcome: str, seconds: float) -> None:
        _series(self._children, self.step_attempts, task, outcome)[0] += 1
        _observe(_series(self._children, self.step_seconds, task), self.step_seconds, seconds)

    def decided(self, outcome: str, seconds: float) -> None:
        series = _series(self._children, self.decision_seconds, outcome)
        _observe(series, self.decision_seconds, seconds)

    def set_facts(self, facts: Facts) -> None:
        """Set the gauges from freshly collected facts (labels gone from them are removed)."""
        _set_all(self.queue_depth, "queue", dict(facts.queues))
        _set_all(self.projection_position, "projection",
                 {p.name: p.position for p in facts.projections})  # fmt: skip
        _set_all(self.projection_lag, "projection", {p.name: p.lag for p in facts.projections})
        _set_all(self.stream_messages, "stream", {s.name: s.messages for s in facts.streams})
        _set_all(self.stream_bytes, "stream", {s.name: s.bytes for s in facts.streams})
        if facts.approvals_pending is not None:
            self.approvals_pending.set(facts.approvals_pending)
        if facts.engine is not None:
            self.workers.set(len(facts.engine.workers))
            self.runs_parked.set(facts.engine.parked)


def _series(children: dict[tuple[object, ...], Series], family: Family, *values: str) -> Series:
    """The series of `family` under `values`, kept at hand by (family, *values); at most
    metric_children_cached_max kept (past it, found in the family each time: still counted)."""
    key = (family, *values)
    series = children.get(key)
    if series is None:
        series = family.new_series(values)
        if len(children) < metric_children_cached_max:
            children[key] = series
    return series


def _observe(series: Series, family: Family, seconds: float) -> None:
    """One observation into a histogram's series: the first bucket whose bound is at least it
    (prometheus-client's rule), and the sum."""
    amount = max(0.0, seconds)
    series[bisect.bisect_left(family.bounds, amount)] += 1
    series[-2] += amount


def _set_all(gauge: Gauge, label: str, values: dict[str, int]) -> None:
    known = {sample.labels[label] for metric in gauge.collect() for sample in metric.samples}
    for name in known - set(values):
        gauge.remove(name)
    for name, value in values.items():
        gauge.labels(**{label: name}).set(value)


def render(metrics: Metrics) -> bytes:
    """The metrics in the Prometheus text format (serve them as `CONTENT_TYPE`)."""
    return generate_latest(metrics.registry)


class MetricsServer:
    """`render(metrics)` at http://host:port/metrics, on a thread (prometheus-client's own
    small HTTP server), until `stop`."""

    def __init__(self, metrics: Metrics, host: str, port: int) -> None:
        self._server, self._thread = start_http_server(port, addr=host, registry=metrics.registry)
        self.host = host
        self.port = int(self._server.server_port)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=metrics_server_stop_s)


def parse_address(text: str) -> tuple[str, int]:
    """(host, port) of `--metrics HOST:PORT`, `:PORT` or `PORT` (host: 127.0.0.1).

    Raises:
        ValueError: naming the value and the rule.
    """
    host, _, port_text = text.rpartition(":")
    host = host.strip("[]") or DEFAULT_HOST
    if not port_text.isdigit() or not 0 < int(port_text) <= PORT_MAX:
        raise ValueError(
            f"--metrics {text!r} is not HOST:PORT with a port within 1..{PORT_MAX} "
            "(e.g. 127.0.0.1:9464, or :9464 for loopback)"
        )
    return host, int(port_text)
