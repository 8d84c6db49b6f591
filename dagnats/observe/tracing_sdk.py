"""The OpenTelemetry SDK side of `tracing`: the tracer provider, its exporter and the id
generator that lets a span take the id derived from what it is about (`tracing.forced_ids`).

Imported only when tracing is turned on: the SDK is the optional `dagnats[otel]` extra.
"""

from __future__ import annotations

import os

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator

from dagnats.observe.ids import forced_ids

DEFAULT_SERVICE_NAME = "dagnats"


class DerivedIds(IdGenerator):
    """Random ids, except for a span started while `forced_ids` holds its ids."""

    def __init__(self) -> None:
        self._random = RandomIdGenerator()

    def generate_span_id(self) -> int:
        forced = forced_ids.get()
        return forced[1] if forced is not None else self._random.generate_span_id()

    def generate_trace_id(self) -> int:
        forced = forced_ids.get()
        return forced[0] if forced is not None else self._random.generate_trace_id()


def provider(exporter: SpanExporter, *, batch: bool, service_name: str = "") -> TracerProvider:
    """A tracer provider exporting to `exporter` (batched, or span by span)."""
    attributes = {}
    if service_name or not os.environ.get("OTEL_SERVICE_NAME"):
        attributes["service.name"] = service_name or DEFAULT_SERVICE_NAME
    made = TracerProvider(
        resource=Resource.create(attributes), id_generator=DerivedIds(), shutdown_on_exit=True
    )
    processor: SpanProcessor = (
        BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter)
    )
    made.add_span_processor(processor)
    return made
