"""Traces over OTLP/HTTP from real processes: a `dagnats serve` and a `dagnats worker` with
`OTEL_EXPORTER_OTLP_ENDPOINT` pointing at a collector in this test (a loopback HTTP server
that decodes what it receives with the OTLP protobuf types). The worker's handler spans,
exported by another process than the engine's spans, join the run's trace under the attempt
span their task message named.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from dagnats.observe import ids
from tests.fault_support import REPO_ROOT, Processes, connected, dagnats_command
from tests.nats_fixtures import wait_for
from tests.test_status import start_serve

ORDER = REPO_ROOT / "examples" / "order"
Received = list[tuple[str, str, int, int, int]]  # (service, span name, trace, span, parent)


class Collector(ThreadingHTTPServer):
    """Keeps every span POSTed to /v1/traces."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Receive)
        self.spans: Received = []
        self.lock = threading.Lock()

    def received(self) -> Received:
        with self.lock:
            return list(self.spans)


class _Receive(BaseHTTPRequestHandler):
    server: Collector

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        request = ExportTraceServiceRequest.FromString(body)
        found = []
        for resource_spans in request.resource_spans:
            service = next(
                (a.value.string_value for a in resource_spans.resource.attributes
                 if a.key == "service.name"), "",
            )  # fmt: skip
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    parent = (
                        int.from_bytes(span.parent_span_id, "big") if span.parent_span_id else 0
                    )
                    found.append((service, span.name, int.from_bytes(span.trace_id, "big"),
                                  int.from_bytes(span.span_id, "big"), parent))  # fmt: skip
        with self.server.lock:
            self.server.spans.extend(found)
        answer = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: object) -> None:  # quiet
        return


@pytest.fixture
def collector() -> Iterator[Collector]:
    server = Collector()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)



async def test_serve_and_worker_export_one_trace_per_run_to_an_otlp_collector(
    processes: Processes, collector: Collector, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{collector.server_port}")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")  # export within 0.1 s of a span's end
    monkeypatch.setenv("OTEL_SERVICE_NAME", "orders")
    url = await start_serve(processes, tmp_path / "data", metrics_port=None)
    worker_argv = [*dagnats_command(), "worker", "examples.order.worker:worker", "--nats-url", url]
    processes.start("worker", worker_argv)
    async with connected(url) as client:
        await client.register_workflow((ORDER / "workflow.json").read_bytes())
        run_id = await client.start("order", json.loads((ORDER / "input.json").read_text()))
        assert (await client.wait(run_id, timeout_s=30)).status == "completed"
    trace_id = ids.trace_id_of(run_id)

    def of_run(name: str) -> Received:
        return [s for s in collector.received() if s[1] == name and s[2] == trace_id]

    def arrived() -> bool:
        return bool(of_run("run order")) and len(of_run("handle shipping.ship")) == 1

    await wait_for(arrived, timeout_ms=15_000, what="the run span and the last handler span")
    run = of_run("run order")
    assert len(run) == 1 and run[0][4] == 0 and run[0][3] == ids.run_span_id(run_id)
    charges = of_run("handle payments.charge")
    assert sorted(parent for *_, parent in charges) == sorted(
        ids.attempt_span_id(run_id, "charge", attempt) for attempt in (1, 2)
    )
    for attempt in (1, 2):
        [span] = of_run(f"step charge #{attempt}")
        assert span[3] == ids.attempt_span_id(run_id, "charge", attempt)
        assert span[4] == ids.run_span_id(run_id)
    assert {service for service, *_ in collector.received()} == {"orders"}
