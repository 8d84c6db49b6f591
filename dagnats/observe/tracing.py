"""OpenTelemetry traces: a span per run, per step attempt and per engine decision, and the
W3C trace context in task messages so a worker's handler span joins its run's trace.

Off unless `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, or a
test calls `configure(exporter)`: then every hook is one `is None` test. On, spans go through
the OpenTelemetry SDK (the `dagnats[otel]` extra) to an OTLP/HTTP exporter (batched).

A run outlives processes (its engine may restart, its steps run in other processes), so its
spans are made from its history, with ids derived from what they are about: the trace id from
the run id, the run span's id from the run id, an attempt span's id from (run, step,
attempt). The run span is emitted when the run ends (from its start to its end), an attempt
span when the attempt ends (from when it was scheduled), each a child of the run span; a
decision span (one command decided and appended) is emitted as it happens, under the run
span. The engine puts the attempt span's context in the task message (`traceparent`), so the
worker's handler span is that attempt's child, and a handler's own spans (`ctx.tracer`) its.

This module imports the OpenTelemetry API only (a runtime dependency: the no-op tracer);
the SDK is imported by `configure`. It never raises into the engine or the worker.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Final

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import (
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from dagnats.observe.ids import attempt_span_id, forced_ids, run_span_id, trace_id_of
from kernel.events import StepCompleted, StepFailed, StepLost, StepTimedOut
from kernel.state import RunState

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

    from kernel.commands import AnyCommand
    from kernel.effects import EnqueueTask

log = logging.getLogger("dagnats.tracing")
TRACER_NAME: Final = "dagnats"
TRACEPARENT: Final = "traceparent"  # the W3C trace context header a task message carries
ENDPOINT_VARIABLES: Final = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
_propagator: Final = TraceContextTextMapPropagator()
AttemptEnd = StepCompleted | StepFailed | StepTimedOut | StepLost
ATTEMPT_ENDS: Final = (StepCompleted, StepFailed, StepTimedOut, StepLost)


def _parent(run_id: str, span_id: int) -> otel_context.Context:
    """A context whose current span is the (not yet emitted) span `span_id` of the run."""
    span_context = SpanContext(
        trace_id=trace_id_of(run_id),
        span_id=span_id,
        is_remote=False,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
    )
    return trace.set_span_in_context(NonRecordingSpan(span_context))


def _ns(at_ms: int) -> int:
    return at_ms * 1_000_000


class Tracing:
    """Makes the engine's spans from its decisions (see the module docstring)."""

    def __init__(self, provider: TracerProvider) -> None:
        self.provider = provider
        self.tracer = provider.get_tracer(TRACER_NAME)

    # -- the engine --------------------------------------------------------------------------

    def start_decision(self, command: AnyCommand) -> Span:
        """The span of one command's decision, under its run's span (ended by the caller)."""
        kind = str(type(command).__struct_config__.tag)
        return self.tracer.start_span(
            f"decide {kind}",
            context=_parent(command.run_id, run_span_id(command.run_id)),
            kind=SpanKind.INTERNAL,
            attributes={"dagnats.run_id": command.run_id, "dagnats.command": kind},
        )

    def attempt_ended(self, state: RunState, event: AttemptEnd, start_ms: int) -> None:
        """Emit the span of an attempt that ended with `event` (scheduled at `start_ms`)."""
        run_id = state.run_id
        outcome = str(type(event).__struct_config__.tag).removeprefix("step.")
        attributes: dict[str, str | int] = {
            "dagnats.run_id": run_id,
            "dagnats.step_id": event.step_id,
            "dagnats.attempt": event.attempt,
            "dagnats.task": task_of(state, event.step_id),
            "dagnats.outcome": outcome,
        }
        span = self._start_with_id(
            f"step {event.step_id} #{event.attempt}",
            _parent(run_id, run_span_id(run_id)),
            (trace_id_of(run_id), attempt_span_id(run_id, event.step_id, event.attempt)),
            _ns(min(start_ms, event.at_ms)),
            attributes,
        )
        if not isinstance(event, StepCompleted):
            span.set_status(Status(StatusCode.ERROR, event.error.message[:200]))
        span.end(end_time=_ns(event.at_ms))

    def run_ended(self, state: RunState) -> None:
        """Emit the span of a run that has ended (from its start to its end)."""
        run_id = state.run_id
        end_ms = state.ended_at_ms if state.ended_at_ms is not None else state.started_at_ms
        workflow = state.workflow.name if state.workflow is not None else ""
        span = self._start_with_id(
            f"run {workflow}",
            otel_context.Context(),  # the root of the run's trace
            (trace_id_of(run_id), run_span_id(run_id)),
            _ns(state.started_at_ms),
            {"dagnats.run_id": run_id, "dagnats.workflow": workflow,
             "dagnats.status": state.status},
        )  # fmt: skip
        if state.status != "completed":
            message = state.error.message[:200] if state.error is not None else state.status
            span.set_status(Status(StatusCode.ERROR, message))
        span.end(end_time=max(_ns(end_ms), _ns(state.started_at_ms)))

    def _start_with_id(
        self,
        name: str,
        parent: otel_context.Context,
        ids: tuple[int, int],
        start_ns: int,
        attributes: Mapping[str, str | int],
    ) -> Span:
        token = forced_ids.set(ids)
        try:
            return self.tracer.start_span(
                name, context=parent, start_time=start_ns, attributes=attributes
            )
        finally:
            forced_ids.reset(token)

    @contextlib.contextmanager
    def enqueueing(self, task: EnqueueTask) -> Iterator[None]:
        """While the task message is published: its attempt's span is the current one (the
        queue puts it in the message's `traceparent` header)."""
        parent = _parent(task.run_id, attempt_span_id(task.run_id, task.step_id, task.attempt))
        token = otel_context.attach(parent)
        try:
            yield
        finally:
            otel_context.detach(token)


class HandlerSpan:
    """The worker's span of one handler call (None when tracing is off); `finish` marks it
    failed when the attempt's result is a failure."""

    def __init__(self, span: Span | None) -> None:
        self.span = span

    def finish(self, error: str | None) -> None:
        if self.span is not None and error is not None:
            self.span.set_status(Status(StatusCode.ERROR, error[:200]))


@contextlib.contextmanager
def handler_span(task: EnqueueTask, headers: Mapping[str, str] | None) -> Iterator[HandlerSpan]:
    """The worker's span of a task (current while its handler runs), the child of the
    attempt span whose context the task message carries. With tracing off, the message's
    context is still made current, so spans of a handler's own tracer join the run's trace.
    Headers without a `traceparent` (most tasks when tracing is off) carry no context: no
    extract and no attach for them."""
    parent = _propagator.extract(headers) if headers and TRACEPARENT in headers else None
    tracing = active()
    if tracing is None:
        if parent is None:
            yield HandlerSpan(None)
            return
        token = otel_context.attach(parent)
        try:
            yield HandlerSpan(None)
        finally:
            otel_context.detach(token)
        return
    attributes: dict[str, str | int] = {
        "dagnats.run_id": task.run_id,
        "dagnats.step_id": task.step_id,
        "dagnats.attempt": task.attempt,
        "dagnats.task": task.task,
    }
    with tracing.tracer.start_as_current_span(
        f"handle {task.task}", context=parent, kind=SpanKind.CONSUMER, attributes=attributes
    ) as span:
        yield HandlerSpan(span)


def inject(headers: dict[str, str]) -> dict[str, str]:
    """`headers` with the current span's W3C trace context added (`traceparent`), if any."""
    if trace.get_current_span().get_span_context().is_valid:
        _propagator.inject(headers)
    return headers


def task_of(state: RunState, step_id: str) -> str:
    """The task type of a step of the run (its step type when it runs no task; "" unknown)."""
    step_def = state.step_def(step_id)
    return "" if step_def is None else step_def.task or step_def.type


# -- configuration ---------------------------------------------------------------------------


class _Process:
    """The process's tracing (one per process, as OpenTelemetry's own provider is)."""

    active: Tracing | None = None
    configured = False
    global_tracer: trace.Tracer | None = None  # handlers' tracer with tracing off (made once)


def active() -> Tracing | None:
    """The process's tracing, configured from the environment at the first call (None: off)."""
    if not _Process.configured:
        configure_from_env()
    return _Process.active


def configure_from_env() -> Tracing | None:
    """Tracing with an OTLP/HTTP exporter when an OTLP endpoint variable is set, else off."""
    if not any(os.environ.get(name) for name in ENDPOINT_VARIABLES):
        return configure(None)
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError:
        log.warning("OTEL_EXPORTER_OTLP_ENDPOINT is set but the OpenTelemetry SDK is not "
                    "installed: traces are off (pip install 'dagnats[otel]')")  # fmt: skip
        return configure(None)
    return configure(OTLPSpanExporter(), batch=True)


def configure(
    exporter: SpanExporter | None, *, batch: bool = False, service_name: str = ""
) -> Tracing | None:
    """Turn tracing on with `exporter` (a test's in-memory exporter: `batch=False` exports
    each span as it ends), or off with None. Replaces the tracing configured before (and
    shuts its provider down, flushing it).

    Returns:
        The new tracing, or None when off.
    """
    previous, _Process.active, _Process.configured = _Process.active, None, True
    if previous is not None:
        previous.provider.shutdown()
    if exporter is None:
        return None
    from dagnats.observe import tracing_sdk

    provider = tracing_sdk.provider(exporter, batch=batch, service_name=service_name)
    _Process.active = Tracing(provider)
    return _Process.active


def handler_tracer() -> trace.Tracer:
    """The tracer a handler's own spans use (`ctx.tracer`): dagnats's when tracing is on,
    else the global one (the no-op tracer unless the application set a provider)."""
    tracing = active()
    if tracing is not None:
        return tracing.tracer
    if _Process.global_tracer is None:  # (once: with no provider set yet, OpenTelemetry's
        _Process.global_tracer = trace.get_tracer(TRACER_NAME)  # proxy follows one set later)
    return _Process.global_tracer
