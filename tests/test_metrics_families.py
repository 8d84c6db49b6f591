"""The hooks' counters and histograms (`dagnats.observe.metrics.Family`): plain lists fed per
command and per step, rendered on /metrics exactly as prometheus-client's own `Counter` and
`Histogram` render the same observations (names, help, buckets, labels, `_created` samples);
and cheaper to feed than prometheus-client's children."""

from __future__ import annotations

import re
import time

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from dagnats.observe.metrics import (
    DECISION_SECONDS_BUCKETS,
    STEP_SECONDS_BUCKETS,
    Metrics,
    render,
)

CREATED = re.compile(rb"^(\S+_created\{[^}]*\}) \S+$", re.MULTILINE)
OUTCOMES = ("applied", "ignored", "rejected", "dead", "parked", "retry")
TASKS = ("email", "sms", "a task")
# Inside bucket bounds, on them, between them, and far past the last.
SECONDS = st.one_of(
    st.sampled_from([*DECISION_SECONDS_BUCKETS, *STEP_SECONDS_BUCKETS, 0.0, 1e9]),
    st.floats(min_value=-1.0, max_value=50_000.0, allow_nan=False),
)
Observation = tuple[str, str, str, float]


class Reference:
    """The hooks' metrics as prometheus-client's own Counter and Histogram (the old Metrics)."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.runs_started = Counter(
            "dagnats_runs_started", "Runs started, by workflow.", ["workflow"], registry=r
        )
        self.runs_finished = Counter(
            "dagnats_runs_finished", "Runs that ended, by workflow and final status.",
            ["workflow", "status"], registry=r,
        )  # fmt: skip
        self.step_attempts = Counter(
            "dagnats_step_attempts", "Step attempts that ended, by task type and outcome "
            "(completed, failed, timed_out, lost).", ["task", "outcome"], registry=r,
        )  # fmt: skip
        self.step_seconds = Histogram(
            "dagnats_step_duration_seconds", "Step attempts from scheduled to ended, by task "
            "type.", ["task"], buckets=STEP_SECONDS_BUCKETS, registry=r,
        )  # fmt: skip
        self.decision_seconds = Histogram(
            "dagnats_engine_decision_seconds", "One command decided, appended and its effects "
            "run, by outcome (applied, ignored, rejected, dead, parked, retry).",
            ["outcome"], buckets=DECISION_SECONDS_BUCKETS, registry=r,
        )  # fmt: skip

    def feed(self, kind: str, first: str, second: str, seconds: float) -> None:
        if kind == "decided":
            self.decision_seconds.labels(first).observe(max(0.0, seconds))
        elif kind == "attempt":
            self.step_attempts.labels(first, second).inc()
            self.step_seconds.labels(first).observe(max(0.0, seconds))
        elif kind == "started":
            self.runs_started.labels(first).inc()
        else:
            self.runs_finished.labels(first, second).inc()


def _feed(metrics: Metrics, kind: str, first: str, second: str, seconds: float) -> None:
    if kind == "decided":
        metrics.decided(first, seconds)
    elif kind == "attempt":
        metrics.attempt_ended(first, second, seconds)
    elif kind == "started":
        metrics.run_started(first)
    else:
        metrics.run_finished(first, second)


def _without_created_values(text: bytes) -> bytes:
    return CREATED.sub(rb"\1 T", text)


observations = st.lists(
    st.tuples(
        st.sampled_from(["decided", "attempt", "started", "finished"]),
        st.sampled_from([*OUTCOMES, *TASKS]),
        st.sampled_from(["completed", "failed", "lost"]),
        SECONDS,
    ),
    max_size=60,
)


@settings(max_examples=60, deadline=None)
@given(observations)
def test_the_families_render_as_prometheus_clients_own(seen: list[Observation]) -> None:
    metrics, reference = Metrics(), Reference()
    for observation in seen:
        _feed(metrics, *observation)
        reference.feed(*observation)
    ours = render(metrics)
    theirs = generate_latest(reference.registry)
    families = theirs.split(b"# HELP dagnats_queue_depth")[0]
    assert _without_created_values(ours).startswith(_without_created_values(families)), (
        ours.decode()[:2000],
        families.decode()[:2000],
    )
    created = CREATED.findall(ours)
    assert len(created) == len(CREATED.findall(families)), created


def test_a_series_created_time_is_when_its_labels_were_first_seen() -> None:
    before = time.time()
    metrics = Metrics()
    metrics.decided("applied", 0.001)
    after = time.time()
    line = [x for x in render(metrics).splitlines() if x.startswith(b"dagnats_engine_decision")]
    created = [float(x.rsplit(b" ", 1)[1]) for x in line if b"_created" in x]
    assert len(created) == 1 and before <= created[0] <= after, created


def test_feeding_the_families_costs_less_than_prometheus_clients_children() -> None:
    """Operations, not time: a Family's observation takes no lock and scans no bucket list in
    Python (prometheus-client's child does both per call); what the hooks call per step is
    one dict lookup, one bisect and two additions."""
    metrics = Metrics()
    metrics.attempt_ended("email", "completed", 0.2)
    kept = dict(metrics._children)
    metrics.attempt_ended("email", "completed", 0.3)
    assert metrics._children == kept, "no new series for known labels"
    series = metrics.step_seconds.series[("email",)]
    assert isinstance(series, list) and all(isinstance(value, float) for value in series)
    assert sum(series[: len(metrics.step_seconds.bounds)]) == 2
