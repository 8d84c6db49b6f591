"""Traces of the order example: a real embedded nats-server, the engine and a worker in this
process, spans exported to an in-memory exporter.

The run span is the root of the run's trace; each step attempt's span is its child; each
handler span (the worker's) is the child of its attempt's span, carried in the task message's
`traceparent` header; a handler's own span (`ctx.tracer`) is the child of its handler span.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from dagnats import TaskContext, Worker
from dagnats.observe import ids, tracing
from dagnats.observe.hooks import EngineObserver
from dagnats.runtime.serve import local_stack
from examples.order import worker as order_worker
from kernel.effects import EnqueueTask
from kernel.state import INITIAL_STATE, RunState
from tests.nats_fixtures import wait_for

ORDER = Path(__file__).resolve().parent.parent / "examples" / "order"
WAIT_S = 30.0


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    spans = InMemorySpanExporter()
    tracing.configure(spans)
    try:
        yield spans
    finally:
        tracing.configure(None)


def order_worker_with_own_span() -> Worker:
    """The order example's handlers; `inventory.reserve` opens a span of its own."""
    worker = Worker(concurrency=8)
    for name, handler in order_worker.worker.handlers.items():
        worker.add(name, handler)
    reserve = order_worker.worker.handlers["inventory.reserve"]

    async def reserve_traced(ctx: TaskContext) -> Any:
        with ctx.tracer.start_as_current_span("warehouse lookup"):
            return await reserve(ctx)

    worker.handlers["inventory.reserve"] = reserve_traced
    return worker


def by_name(spans: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [span for span in spans if span.name == name]


def one(spans: tuple[ReadableSpan, ...], name: str) -> ReadableSpan:
    found = by_name(spans, name)
    assert len(found) == 1, f"{len(found)} spans named {name!r}: {[s.name for s in spans]}"
    return found[0]


def parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


async def test_the_order_trace_holds_each_attempt_under_the_run_and_each_handler_under_it(
    tmp_path: Path, exporter: InMemorySpanExporter
) -> None:
    async with local_stack(tmp_path / "data", order_worker_with_own_span()) as (_, client):
        await client.register_workflow((ORDER / "workflow.json").read_bytes())
        run_id = await client.start("order", json.loads((ORDER / "input.json").read_text()))
        state = await client.wait(run_id, timeout_s=WAIT_S)
        assert state.status == "completed", state.error
        await wait_for(lambda: bool(by_name(exporter.get_finished_spans(), "run order")),
                       timeout_ms=5_000, what="the run span")  # fmt: skip
    spans = exporter.get_finished_spans()
    run = one(spans, "run order")
    assert run.parent is None and run.context is not None
    trace_id = run.context.trace_id
    assert trace_id == ids.trace_id_of(run_id)
    assert run.attributes is not None and run.attributes["dagnats.status"] == "completed"

    attempts = {"validate #1", "charge #1", "charge #2", "reserve #1", "ship #1"}
    for name in attempts:
        attempt = one(spans, f"step {name}")
        assert attempt.context is not None and attempt.context.trace_id == trace_id
        assert parent_of(attempt) == run.context.span_id, name
    assert not by_name(spans, "step charge #3")
    failed = one(spans, "step charge #1")
    assert failed.status.status_code is StatusCode.ERROR
    assert "payment gateway timed out" in (failed.status.description or "")

    handled = [span for span in spans if span.name.startswith("handle ")]
    assert sorted(span.name for span in handled) == sorted(
        ["handle order.validate", "handle payments.charge", "handle payments.charge",
         "handle inventory.reserve", "handle shipping.ship"]
    )  # fmt: skip
    attempt_ids = {
        ids.attempt_span_id(
            run_id, str(s.attributes["dagnats.step_id"]), int(str(s.attributes["dagnats.attempt"]))
        )
        for s in handled
        if s.attributes is not None
    }
    for span in handled:
        assert span.context is not None and span.context.trace_id == trace_id
        assert parent_of(span) in attempt_ids, span.name
    reserve_attempt = one(spans, "step reserve #1")
    reserve_handler = one(spans, "handle inventory.reserve")
    assert reserve_attempt.context is not None and reserve_handler.context is not None
    assert parent_of(reserve_handler) == reserve_attempt.context.span_id
    own = one(spans, "warehouse lookup")
    assert parent_of(own) == reserve_handler.context.span_id

    decisions = [span for span in spans if span.name.startswith("decide ")]
    assert one(spans, "decide start_run").attributes is not None
    assert len(decisions) >= len(attempts) + 1  # a start and at least one result per attempt
    for span in decisions:
        assert parent_of(span) == run.context.span_id, span.name


def test_tracing_off_costs_no_span_and_no_header() -> None:
    tracing.configure(None)
    observer = EngineObserver()
    assert observer.tracing is None and not observer.on
    task = EnqueueTask(
        run_id="r1", step_id="s", attempt=1, task="t", input=b"null",  # type: ignore[arg-type]
        metadata=b"{}", msg_id="r1:s:1",  # type: ignore[arg-type]
    )  # fmt: skip
    with observer.enqueueing(task):
        assert tracing.inject({}) == {}


def test_with_tracing_off_the_handlers_tracer_is_made_once_not_per_task() -> None:
    """Off: every task's `ctx.tracer` is one tracer (OpenTelemetry's global one, made once);
    on: dagnats's own."""
    tracing.configure(None)
    first = tracing.handler_tracer()
    assert tracing.handler_tracer() is first
    try:
        active = tracing.configure(InMemorySpanExporter())
        assert active is not None and tracing.handler_tracer() is active.tracer
    finally:
        tracing.configure(None)
    assert tracing.handler_tracer() is first


def test_a_task_message_carries_its_attempt_span_as_traceparent(
    exporter: InMemorySpanExporter,
) -> None:
    observer = EngineObserver()
    assert observer.tracing is not None
    task = EnqueueTask(
        run_id="r1", step_id="s", attempt=2, task="t", input=b"null",  # type: ignore[arg-type]
        metadata=b"{}", msg_id="r1:s:2",  # type: ignore[arg-type]
    )  # fmt: skip
    with observer.enqueueing(task):
        headers = tracing.inject({})
    trace_hex = f"{ids.trace_id_of('r1'):032x}"
    span_hex = f"{ids.attempt_span_id('r1', 's', 2):016x}"
    assert headers == {"traceparent": f"00-{trace_hex}-{span_hex}-01"}
    assert tracing.inject({}) == {}  # the attempt's context is current only while publishing


def test_an_endpoint_without_the_sdk_installed_says_so_and_traces_nothing(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    exporter_module = "opentelemetry.exporter.otlp.proto.http.trace_exporter"
    monkeypatch.setitem(sys.modules, exporter_module, None)  # as if not installed
    with caplog.at_level(logging.WARNING, logger="dagnats.tracing"):
        assert tracing.configure_from_env() is None
    assert tracing.active() is None
    assert "pip install 'dagnats[otel]'" in caplog.text


def test_with_an_endpoint_set_the_otlp_exporter_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    try:
        configured = tracing.configure_from_env()
        assert configured is not None and tracing.active() is configured
    finally:
        tracing.configure(None)
    assert tracing.active() is None


class BrokenTracing(tracing.Tracing):
    def run_ended(self, state: RunState) -> None:
        raise RuntimeError("exporter exploded")


def test_a_failing_hook_is_logged_once_and_never_raises_into_the_engine(
    exporter: InMemorySpanExporter, caplog: pytest.LogCaptureFixture
) -> None:
    active = tracing.active()
    assert active is not None
    observer = EngineObserver(tracing=BrokenTracing(active.provider))
    before = msgspec.structs.replace(INITIAL_STATE, run_id="r1", status="running")
    after = msgspec.structs.replace(before, status="completed")
    with caplog.at_level(logging.WARNING, logger="dagnats.observe"):
        observer.appended(before, after, ())
        observer.appended(before, after, ())
    assert caplog.text.count("exporter exploded") == 1
