"""A worker nothing can knock over: one real `dagnats worker` process serving the hostile
handlers of tests/hostile_workers.py against one real `dagnats serve` (shared by the tests of
this module to keep them fast). Each test runs one hostile step and asserts the failure its
history records (kind and a readable message), then that the same worker is still alive,
wrote no traceback and no "never retrieved" line, and still completes a healthy run.

Nothing is mocked; every wait is bounded.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any, Final

import pytest

from kernel import limits
from kernel.events import StepFailed, StepTimedOut
from tests.fault_support import (
    Process,
    Processes,
    Serve,
    connected,
    dagnats_command,
    decisions_of,
    events_of,
    workflow,
)
from tests.hostile_workers import HANDLERS
from tests.nats_fixtures import wait_for

run_timeout_s: Final = 20.0
cli_timeout_s: Final = 20.0
NO_RETRY: Final = {"max_attempts": 1}


class Stack:
    def __init__(self, procs: Processes, serve: Serve, worker: Process) -> None:
        self.procs = procs
        self.serve = serve
        self.worker = worker


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp_path = tmp_path_factory.mktemp("hostile")
    procs = Processes(tmp_path)
    try:
        serve = asyncio.run(procs.serve(tmp_path / "data"))
        asyncio.run(_register(serve.url))
        argv = [*dagnats_command(), "worker", "tests.hostile_workers:worker", "--nats-url",
                serve.url]  # fmt: skip
        worker = procs.start("hostile-worker", argv)
        yield Stack(procs, serve, worker)
    finally:
        asyncio.run(procs.close())


async def _register(url: str) -> None:
    async with connected(url) as client:
        for name in HANDLERS:
            step: dict[str, Any] = {"id": "only", "task": name, "retry": NO_RETRY}
            if name in ("hostile.ignores_cancel", "hostile.blocks_thread"):
                step["timeout"] = "1s"
            if name.startswith("hostile.agent_"):
                step.update(type="agent_loop", config={"max_turns": 2, "tools": {}})
            await client.register_workflow(workflow(name.replace(".", "-"), [step]))


async def run_to_end(stack: Stack, task_type: str) -> tuple[str, list[Any]]:
    async with connected(stack.serve.url) as client:
        run_id = await client.start(task_type.replace(".", "-"), {"n": 1})
        state = await client.wait(run_id, timeout_s=run_timeout_s)
        return state.status, events_of(await decisions_of(client, run_id))


def failure_of(events: list[Any]) -> StepFailed | StepTimedOut:
    failed = [event for event in events if isinstance(event, StepFailed | StepTimedOut)]
    assert len(failed) == 1, f"expected one step.failed, got {failed}"
    return failed[0]


async def assert_worker_unharmed(stack: Stack) -> None:
    assert stack.worker.alive(), f"the worker died\n{stack.worker.tail()}"
    status, _ = await run_to_end(stack, "hostile.ok")
    assert status == "completed", f"a healthy run after the hostile one ended {status}"
    stderr = stack.worker.stderr()
    assert "Traceback" not in stderr, stderr[-4_000:]
    assert "never retrieved" not in stderr, stderr[-4_000:]
    assert stack.worker.alive()


async def hostile(
    stack: Stack, task_type: str, kind: str, log_line: str = ""
) -> StepFailed | StepTimedOut:
    """Run the hostile step; check its failure, then (after the worker logged `log_line`)
    that the worker is unharmed."""
    status, events = await run_to_end(stack, task_type)
    assert status == "failed", f"{task_type}: the run ended {status}"
    failed = failure_of(events)
    assert failed.error.kind == kind, (task_type, failed.error)
    assert len(failed.error.message.encode()) <= limits.error_message_bytes_max
    assert len(failed.error.traceback.encode()) <= limits.error_message_bytes_max
    if log_line:
        await wait_for(
            lambda: log_line in stack.worker.stderr(),
            timeout_ms=10_000,
            what=f"the worker to log {log_line!r}",
        )
    await assert_worker_unharmed(stack)
    return failed


async def test_keyboard_interrupt_is_a_failure(stack: Stack) -> None:
    failed = await hostile(stack, "hostile.keyboard_interrupt", "error")
    assert failed.error.message == "the handler raised KeyboardInterrupt()"


async def test_system_exit_is_a_failure(stack: Stack) -> None:
    failed = await hostile(stack, "hostile.system_exit", "error")
    assert failed.error.message == "the handler raised SystemExit(3)"


async def test_generator_exit_is_a_failure(stack: Stack) -> None:
    failed = await hostile(stack, "hostile.generator_exit", "error")
    assert failed.error.message == "the handler raised GeneratorExit()"


async def test_its_own_cancelled_error_is_a_failure(stack: Stack) -> None:
    failed = await hostile(stack, "hostile.own_cancelled", "error")
    assert failed.error.message == (
        "the handler raised CancelledError (the worker did not cancel it)"
    )


async def test_a_hang_past_the_deadline_that_ignores_cancellation_gives_its_slot_back(
    stack: Stack,
) -> None:
    line = "step only attempt 1 passed its deadline and its handler ignored the cancellation"
    failed = await hostile(stack, "hostile.ignores_cancel", "timeout", line)
    assert failed.error.message == "attempt 1 timed out"
    assert stack.worker.stderr().count(line) == 1  # logged once


async def test_a_hang_blocked_in_a_thread_gives_its_slot_back(stack: Stack) -> None:
    line = "step only attempt 1 passed its deadline: its handler was cancelled"
    failed = await hostile(stack, "hostile.blocks_thread", "timeout", line)
    assert failed.error.message == "attempt 1 timed out"


async def test_a_100000_deep_output_is_invalid_output(stack: Stack) -> None:
    failed = await hostile(stack, "hostile.deep_output", "invalid_output")
    assert "nests deeper than 64 levels" in failed.error.message, failed.error.message
    assert failed.error.message.startswith("the output cannot be sent: $[0][0]")


async def test_a_5_mb_error_message_is_cut_to_its_limit(stack: Stack) -> None:
    failed = await hostile(stack, "hostile.huge_error", "error")
    assert failed.error.message.startswith("ValueError: xxxx")
    assert failed.error.message.endswith("... (cut: 5000012 bytes)"), failed.error.message[-80:]
    assert len(failed.error.message.encode()) == limits.error_message_bytes_max


async def test_an_error_whose_str_raises_is_reported(stack: Stack) -> None:
    failed = await hostile(stack, "hostile.unprintable", "error")
    assert failed.error.message == (
        "UnprintableError (its message could not be rendered: RuntimeError: no str for you)"
    )


async def test_bytes_in_the_output_are_refused(stack: Stack) -> None:
    failed = await hostile(stack, "hostile.bytes_output", "invalid_output")
    assert failed.error.message.startswith(
        "the output cannot be sent: $.items[0].blob is bytes, which JSON cannot hold"
    ), failed.error.message


async def test_nan_in_the_output_is_refused(stack: Stack) -> None:
    failed = await hostile(stack, "hostile.nan_output", "invalid_output")
    assert failed.error.message.startswith("the output cannot be sent: $.items[3].score is nan"), (
        failed.error.message
    )


async def test_infinity_in_the_output_is_refused(stack: Stack) -> None:
    failed = await hostile(stack, "hostile.infinity_output", "invalid_output")
    assert failed.error.message.startswith("the output cannot be sent: $.total is inf"), (
        failed.error.message
    )


async def test_an_agent_turn_raising_system_exit_is_a_failure(stack: Stack) -> None:
    failed = await hostile(stack, "hostile.agent_system_exit", "error")
    assert failed.error.message == "turn 1 failed: the handler raised SystemExit(4)"


async def test_an_agent_turn_returning_nan_is_refused(stack: Stack) -> None:
    failed = await hostile(stack, "hostile.agent_nan", "invalid_output")
    assert "$.output.score is nan" in failed.error.message, failed.error.message


@pytest.mark.parametrize("value", ["0", "-3"])
def test_the_cli_refuses_concurrency_below_one(stack: Stack, value: str) -> None:
    result = stack.procs.cli(
        "worker", "tests.hostile_workers:worker", "--nats-url", stack.serve.url,
        "--concurrency", value, timeout_s=cli_timeout_s,
    )  # fmt: skip
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    rule = "it must be within 1..10000 (handlers run at once)"
    assert lines == [f"error: --concurrency {value}: {rule}"]


@pytest.mark.parametrize("value", [0, -3])
def test_a_worker_refuses_concurrency_below_one(value: int) -> None:
    from dagnats.worker import Worker

    with pytest.raises(ValueError, match=rf"concurrency {value} must be within 1\.\.10000"):
        Worker(concurrency=value)


def test_sigterm_drains_within_a_bound_with_a_hung_handler(stack: Stack) -> None:
    """Last in this module: the worker holds a handler blocked in a thread (the test above
    left it); SIGTERM still ends the process, cleanly and soon."""
    assert stack.worker.alive()
    code = asyncio.run(stack.worker.terminate(timeout_ms=15_000))
    assert code == 0, stack.worker.tail()
    assert "exiting without waiting for hung handler(s)" in stack.worker.stderr()
