"""The HTTP worker bridge over real HTTP (uvicorn), a real nats-server and a real engine.

Each test gets its own stack (tests/bridge_support.py): poll/complete/fail/heartbeat, the
long-poll bound, a vanished HTTP worker's task coming back after the heartbeat timeout (to
the bridge or to a native worker on the same consumer), 404 for unknown and expired ids, 409
for a second completion with exactly one result in history, oversized bodies, bad JSON, and
agent loop turns. Waits are bounded; nothing sleeps and hopes.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from dagnats import TaskContext, Worker
from dagnats.api.checks import HEARTBEAT_ENV, BridgeSettingError, bridge_ack_wait_ms
from dagnats.runtime import settings
from kernel import limits
from kernel.commands import CompleteTask
from kernel.effects import life_tag
from kernel.events import StepCompleted, StepFailed, StepLost, StepStarted
from kernel.workflow.builder import Retry, Workflow
from tests.bridge_support import BridgeStack, GatedCommands, RefusingCommands, bridge_stack
from tests.nats_fixtures import unique, wait_for

WAIT_S = 30.0
SHORT_ACK_WAIT_MS = 1_500


@pytest_asyncio.fixture
async def stack(tmp_path: Path) -> AsyncIterator[BridgeStack]:
    async with bridge_stack(tmp_path / "data", ack_wait_ms=SHORT_ACK_WAIT_MS) as running:
        yield running


async def start_one(stack: BridgeStack, task_type: str, payload: Any = None,
                    max_attempts: int = 3) -> str:  # fmt: skip
    workflow = (
        Workflow(unique("w"))
        .task("s", task=task_type, retry=Retry(max_attempts=max_attempts, initial_delay=20))
        .build()
    )
    return await stack.client.start(workflow, payload if payload is not None else {"n": 1})


def problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/problem+json"), response.headers
    body: dict[str, Any] = response.json()
    assert body["status"] == status and body["title"] and body["detail"], body
    assert body["type"].startswith("urn:dagnats:problem:"), body
    return body


async def test_poll_complete_runs_the_step_once_with_the_workers_id(stack: BridgeStack) -> None:
    task_type = unique("t")
    run_id = await start_one(stack, task_type, {"name": "ada"})
    task = await stack.poll_one(task_type)
    assert (task["run_id"], task["step_id"], task["attempt"]) == (run_id, "s", 1)
    assert task["input"] == {"name": "ada"} and task["task"] == task_type
    assert task["idempotency_key"] == f"{run_id}:s:1"
    assert task["lease_ms"] == SHORT_ACK_WAIT_MS and 0 < task["heartbeat_ms"] < task["lease_ms"]
    answer = await stack.post(f"/v1/tasks/{task['id']}/complete", {"output": {"hello": "ada"}})
    assert answer.status_code == 200 and answer.json() == {"id": task["id"], "status": "completed"}
    state = await stack.client.wait(run_id, timeout_s=WAIT_S)
    assert state.status == "completed" and bytes(state.output) == b'{"hello":"ada"}'
    events = await stack.events(run_id)
    assert [e.attempt for e in events if isinstance(e, StepCompleted)] == [1]
    started = [e for e in events if isinstance(e, StepStarted)]
    assert [e.worker_id for e in started] == [stack.bridge.worker_id]
    # The result carries the life tag of its task (a run's seed: kernel/commands `Life`).
    state_seed = (await stack.client.get_run(run_id)).seed
    results = [d.command async for _, d in stack.client.history(run_id)]
    completes = [c for c in results if isinstance(c, CompleteTask)]
    assert [c.life for c in completes] == [life_tag(state_seed)], completes


async def test_a_retryable_failure_then_a_completion_is_a_retry(stack: BridgeStack) -> None:
    task_type = unique("t")
    run_id = await start_one(stack, task_type)
    first = await stack.poll_one(task_type)
    body = {"error": "busy", "retryable": True, "retry_after_ms": 50}
    failed = await stack.post(f"/v1/tasks/{first['id']}/fail", body)
    assert failed.status_code == 200 and failed.json()["status"] == "failed", failed.text
    second = await stack.poll_one(task_type)
    assert second["attempt"] == 2 and second["id"] != first["id"]
    await stack.post(f"/v1/tasks/{second['id']}/complete", {"output": 2})
    state = await stack.client.wait(run_id, timeout_s=WAIT_S)
    assert state.status == "completed"
    fails = [e for e in await stack.events(run_id) if isinstance(e, StepFailed)]
    assert [(f.attempt, f.error.message, f.error.kind, f.will_retry) for f in fails] == [
        (1, "busy", "error", True)
    ]


async def test_a_non_retryable_failure_fails_the_run(stack: BridgeStack) -> None:
    task_type = unique("t")
    run_id = await start_one(stack, task_type)
    task = await stack.poll_one(task_type)
    body = {"error": "bad card", "retryable": False, "traceback": "at x"}
    answer = await stack.post(f"/v1/tasks/{task['id']}/fail", body)
    assert answer.status_code == 200, answer.text
    state = await stack.client.wait(run_id, timeout_s=WAIT_S)
    assert state.status == "failed"
    fails = [e for e in await stack.events(run_id) if isinstance(e, StepFailed)]
    assert [(f.error.kind, f.will_retry, f.error.traceback) for f in fails] == [
        ("non_retryable", False, "at x")
    ]
    both = await stack.post(f"/v1/tasks/{task['id']}/fail",
                            {"error": "x", "retryable": False, "retry_after_ms": 5})  # fmt: skip
    assert problem(both, 422)["detail"].startswith("retry_after_ms is given with retryable false")


async def test_heartbeats_keep_a_task_past_the_heartbeat_timeout(stack: BridgeStack) -> None:
    task_type = unique("t")
    run_id = await start_one(stack, task_type)
    task = await stack.poll_one(task_type)
    beats = 0
    loop = asyncio.get_running_loop()
    held_until = loop.time() + 2 * SHORT_ACK_WAIT_MS / 1000  # twice the heartbeat timeout
    while loop.time() < held_until:
        beat = await stack.post(f"/v1/tasks/{task['id']}/heartbeat")
        assert beat.status_code == 200 and beat.json()["lease_ms"] == SHORT_ACK_WAIT_MS, beat.text
        beats += 1
        await asyncio.sleep(task["heartbeat_ms"] / 1000)
    assert beats >= 4
    assert await stack.poll(task_type, timeout_ms=200) == []  # nobody else got it
    answer = await stack.post(f"/v1/tasks/{task['id']}/complete", {"output": "kept"})
    assert answer.status_code == 200, answer.text
    state = await stack.client.wait(run_id, timeout_s=WAIT_S)
    assert state.status == "completed"
    assert not [e for e in await stack.events(run_id) if isinstance(e, StepLost)]


async def test_a_vanished_http_worker_s_task_comes_back_after_the_timeout(
    stack: BridgeStack,
) -> None:
    task_type = unique("t")
    run_id = await start_one(stack, task_type, max_attempts=1)
    lost = await stack.poll_one(task_type)
    # The HTTP worker vanishes: no heartbeat. The task comes back, attempt 1 is reported lost
    # (not counted against max_attempts 1), and attempt 2 is handed out under a new id.
    again = await stack.poll_one(task_type, within_ms=4 * SHORT_ACK_WAIT_MS + 10_000)
    assert (again["run_id"], again["attempt"]) == (run_id, 2) and again["id"] != lost["id"]
    for verb in ("complete", "heartbeat", "fail"):
        gone = await stack.post(f"/v1/tasks/{lost['id']}/{verb}", {} if verb != "fail" else
                                {"error": "late"})  # fmt: skip
        assert "unknown or its lease expired" in problem(gone, 404)["detail"]
    await stack.post(f"/v1/tasks/{again['id']}/complete", {"output": "second"})
    state = await stack.client.wait(run_id, timeout_s=WAIT_S)
    assert state.status == "completed"
    events = await stack.events(run_id)
    assert [e.attempt for e in events if isinstance(e, StepLost)] == [1]
    assert [e.attempt for e in events if isinstance(e, StepCompleted)] == [2]


async def test_a_native_worker_takes_what_a_vanished_http_worker_held(
    stack: BridgeStack,
) -> None:
    task_type = unique("t")
    run_id = await start_one(stack, task_type, max_attempts=1)
    await stack.poll_one(task_type)  # and never heard of again
    calls: Counter[int] = Counter()
    worker = Worker(concurrency=2, heartbeat_interval_ms=300)

    async def handle(ctx: TaskContext) -> str:
        calls[ctx.attempt] += 1
        return "native"

    worker.add(task_type, handle)
    connection = stack.bridge.connection
    assert connection is not None  # the same consumer, through the same worker credential
    stop = asyncio.Event()
    serving = asyncio.create_task(
        worker.serve(connection.tasks, connection.commands, connection.commands, stop)
    )
    try:
        state = await stack.client.wait(run_id, timeout_s=WAIT_S)
    finally:
        stop.set()
        await asyncio.wait_for(serving, timeout=WAIT_S)
    assert state.status == "completed" and bytes(state.output) == b'"native"'
    assert calls == Counter({2: 1})
    events = await stack.events(run_id)
    assert [e.attempt for e in events if isinstance(e, StepLost)] == [1]


async def test_a_second_completion_is_409_and_history_has_one_result(stack: BridgeStack) -> None:
    task_type = unique("t")
    run_id = await start_one(stack, task_type)
    task = await stack.poll_one(task_type)
    path = f"/v1/tasks/{task['id']}"
    answers = await asyncio.gather(
        *(stack.post(f"{path}/complete", {"output": index}) for index in range(5))
    )
    codes = Counter(answer.status_code for answer in answers)
    assert codes == Counter({200: 1, 409: 4}), [a.text for a in answers]
    for again in (await stack.post(f"{path}/complete", {"output": 9}),
                  await stack.post(f"{path}/fail", {"error": "late"}),
                  await stack.post(f"{path}/heartbeat")):  # fmt: skip
        assert "already completed" in problem(again, 409)["detail"]
    state = await stack.client.wait(run_id, timeout_s=WAIT_S)
    assert state.status == "completed"
    winner = next(a for a in answers if a.status_code == 200)
    assert winner.json()["status"] == "completed"
    completed = [e for e in await stack.events(run_id) if isinstance(e, StepCompleted)]
    assert len(completed) == 1 and completed[0].attempt == 1


async def test_unknown_ids_are_404(stack: BridgeStack) -> None:
    for verb, body in (("complete", {"output": 1}), ("fail", {"error": "x"}), ("heartbeat", None)):
        answer = await stack.post(f"/v1/tasks/no-such-task/{verb}", body)
        assert problem(answer, 404)["instance"] == f"/v1/tasks/no-such-task/{verb}"


async def test_the_long_poll_returns_empty_within_its_bound_and_wakes_for_a_task(
    stack: BridgeStack,
) -> None:
    task_type = unique("t")
    assert await stack.poll(task_type, timeout_ms=0) == []
    assert await stack.poll(task_type, timeout_ms=300) == []
    over = await stack.post("/v1/tasks/poll", {"task_types": [task_type], "timeout_ms": 60_001})
    assert problem(over, 400)["errors"][0]["field"] == "timeout_ms"
    waiting = asyncio.create_task(stack.poll(task_type, timeout_ms=20_000))
    await asyncio.sleep(0)
    run_id = await start_one(stack, task_type)
    tasks = await asyncio.wait_for(waiting, timeout=WAIT_S)
    assert [t["run_id"] for t in tasks] == [run_id]


async def test_a_poll_that_does_not_wait_takes_a_task_that_is_there(stack: BridgeStack) -> None:
    """`timeout_ms` 0 (the default): what is queued now, at once (on Python 3.11 a lock taken
    with `wait_for(..., 0)` was never taken, so such a poll never returned a task)."""
    task_type = unique("t")
    run_id = await start_one(stack, task_type)
    taken: list[dict[str, Any]] = []

    async def got() -> bool:
        response = await stack.post("/v1/tasks/poll", {"task_types": [task_type]})
        assert response.status_code == 200, response.text
        taken.extend(response.json()["tasks"])
        return bool(taken)

    await wait_for(got, timeout_ms=20_000, what="the task, by polls that do not wait")
    assert [t["run_id"] for t in taken] == [run_id]
    assert (await stack.post(f"/v1/tasks/{taken[0]['id']}/complete", {})).status_code == 200


async def test_one_poll_takes_several_tasks_of_several_types(stack: BridgeStack) -> None:
    first, second = unique("t"), unique("t")
    runs = {await start_one(stack, first) for _ in range(3)}
    runs.add(await start_one(stack, second))
    taken: list[dict[str, Any]] = []

    async def all_taken() -> bool:
        body = {"task_types": [first, second], "max_tasks": 10, "timeout_ms": 500}
        response = await stack.post("/v1/tasks/poll", body)
        taken.extend(response.json()["tasks"])
        return len(taken) >= 4

    await wait_for(all_taken, timeout_ms=20_000, what="four tasks")
    assert {t["run_id"] for t in taken} == runs and len(taken) == 4
    assert stack.bridge.held == 4
    for task in taken:
        assert (await stack.post(f"/v1/tasks/{task['id']}/complete", {})).status_code == 200
    for run_id in runs:
        assert (await stack.client.wait(run_id, timeout_s=WAIT_S)).status == "completed"


async def test_results_settle_many_in_one_request_each_answered_and_then_poll(
    stack: BridgeStack,
) -> None:
    """/v1/tasks/results: completions and a failure in one request, each answered in order;
    an unknown id and a repeated id are refused with their problem and change nothing; with a
    poll it then hands out the next task; each run has exactly one result per attempt."""
    task_type = unique("t")
    runs = [await start_one(stack, task_type, {"n": index}) for index in range(3)]
    taken: list[dict[str, Any]] = []

    async def all_taken() -> bool:
        taken.extend(await stack.poll(task_type, timeout_ms=500, max_tasks=3))
        return len(taken) >= 3

    await wait_for(all_taken, timeout_ms=20_000, what="three tasks")
    first, second, third = sorted(taken, key=lambda task: runs.index(task["run_id"]))
    items = [
        {"id": first["id"], "output": {"done": 1}},
        {"id": "no-such-task", "output": 1},
        {"id": second["id"], "error": "busy", "retryable": True, "retry_after_ms": 10},
        {"id": first["id"], "output": {"done": 2}},  # the same task again: refused
        {"id": third["id"], "output": {"done": 3}},
    ]
    body = {"results": items, "poll": {"task_types": [task_type], "timeout_ms": 10_000}}
    answer = await stack.post("/v1/tasks/results", body)
    assert answer.status_code == 200, answer.text
    reply = answer.json()
    assert [(r["id"], r["status"]) for r in reply["results"]] == [
        (first["id"], "completed"), ("no-such-task", "refused"), (second["id"], "failed"),
        (first["id"], "refused"), (third["id"], "completed"),
    ]  # fmt: skip
    assert reply["results"][1]["problem"]["status"] == 404, reply
    assert reply["results"][3]["problem"]["status"] == 409, reply
    [retry] = reply["tasks"]  # the poll took the failed step's second attempt
    assert (retry["run_id"], retry["attempt"]) == (second["run_id"], 2), retry
    last = await stack.post("/v1/tasks/results", {"results": [{"id": retry["id"], "output": 2}]})
    assert [r["status"] for r in last.json()["results"]] == ["completed"], last.text
    for run_id in runs:
        assert (await stack.client.wait(run_id, timeout_s=WAIT_S)).status == "completed"
        completed = Counter(
            e.attempt for e in await stack.events(run_id) if isinstance(e, StepCompleted)
        )
        assert sum(completed.values()) == 1, (run_id, completed)
    bad = await stack.post("/v1/tasks/results", {"results": [], "poll": {"task_types": []}})
    assert problem(bad, 400)["errors"][0]["field"] == "poll.task_types"
    too_many = {"results": [{"id": "x"}] * 101}
    assert problem(await stack.post("/v1/tasks/results", too_many), 400)["errors"]


async def test_bad_requests_get_problems_and_change_nothing(stack: BridgeStack) -> None:
    task_type = unique("t")
    run_id = await start_one(stack, task_type)
    task = await stack.poll_one(task_type)
    path = f"/v1/tasks/{task['id']}"
    malformed = problem(await stack.post(f"{path}/complete", b'{"output": [1, 2}'), 400)
    assert "malformed" in malformed["detail"] and "(byte 16)" in malformed["detail"], malformed
    assert (
        "truncated"
        in problem(await stack.post(f"{path}/complete", b'{"output": [1'), 400)["detail"]
    )
    wrong = problem(await stack.post(f"{path}/fail", {"error": "x", "retryable": "yes"}), 400)
    assert wrong["errors"] == [{"field": "retryable", "message": "Expected `bool`, got `str`"}]
    extra = problem(await stack.post(f"{path}/complete", {"outptu": 1}), 400)
    assert "outptu" in extra["detail"]
    turn = problem(await stack.post(f"{path}/complete", {"turn": {"agent": "done"}}), 422)
    assert "not an agent loop turn" in turn["detail"]
    big = b'{"output": "' + b"x" * (limits.payload_bytes_max + 64 * 1024) + b'"}'
    assert problem(await stack.post(f"{path}/complete", big), 413)["hint"]
    bad_poll = problem(await stack.post("/v1/tasks/poll", {"task_types": ["a b"]}), 422)
    assert "task_types[0]" in bad_poll["detail"]
    none = problem(await stack.post("/v1/tasks/poll", {"task_types": []}), 400)
    assert none["errors"][0]["field"] == "task_types"
    too_many = {"task_types": [task_type], "max_tasks": 101}
    assert problem(await stack.post("/v1/tasks/poll", too_many), 400)["errors"]
    # The task is still held, untouched: it completes once.
    assert (await stack.post(f"{path}/complete", {"output": "ok"})).status_code == 200
    state = await stack.client.wait(run_id, timeout_s=WAIT_S)
    assert state.status == "completed" and bytes(state.output) == b'"ok"'


async def test_an_output_over_the_payload_limit_is_an_invalid_output_failure(
    stack: BridgeStack,
) -> None:
    task_type = unique("t")
    run_id = await start_one(stack, task_type, max_attempts=1)
    task = await stack.poll_one(task_type)
    big = {"output": "x" * (limits.payload_bytes_max + 1)}  # within the body limit
    refused = problem(await stack.post(f"/v1/tasks/{task['id']}/complete", big), 422)
    assert (
        "invalid_output" in refused["detail"] and str(limits.payload_bytes_max) in refused["detail"]
    )
    state = await stack.client.wait(run_id, timeout_s=WAIT_S)
    assert state.status == "failed"
    fails = [e for e in await stack.events(run_id) if isinstance(e, StepFailed)]
    assert [f.error.kind for f in fails] == ["invalid_output"]
    again = await stack.post(f"/v1/tasks/{task['id']}/complete", {"output": 1})
    assert problem(again, 409)


async def test_an_agent_loop_runs_its_turns_and_tools_over_http(stack: BridgeStack) -> None:
    turn_type, tool_type = unique("turn"), unique("tool")
    workflow = (
        Workflow(unique("agent"))
        .step("agent", type="agent_loop", task=turn_type,
              config={"max_turns": 4, "tools": {"search": tool_type}})
        .build()
    )  # fmt: skip
    refused_run = await stack.client.start(workflow, {"question": "how"})
    first = await stack.poll_one(turn_type)
    assert first["agent"]["turn"] == 1 and first["run_id"] == refused_run
    plain = problem(await stack.post(f"/v1/tasks/{first['id']}/complete", {"output": 1}), 422)
    assert "continue" in plain["detail"] and "invalid_output" in plain["detail"]
    assert (await stack.client.wait(refused_run, timeout_s=WAIT_S)).status == "failed"
    run_id = await stack.client.start(workflow, {"question": "why"})
    first = await stack.poll_one(turn_type)
    assert first["agent"]["turn"] == 1 and first["input"] == {"question": "why"}
    assert first["agent"]["state"] is None and first["agent"]["tool_results"] == []
    turn = {"agent": "continue", "state": {"step": 1}, "tokens_in": 10, "tokens_out": 3,
            "tool_calls": [{"name": "search", "arguments": {"q": "why"}, "id": "c1"}]}  # fmt: skip
    answer = await stack.post(f"/v1/tasks/{first['id']}/complete", {"turn": turn})
    assert answer.status_code == 200, answer.text
    tool = await stack.poll_one(tool_type)
    assert tool["input"] == {"q": "why"} and tool["agent"] is None
    await stack.post(f"/v1/tasks/{tool['id']}/complete", {"output": ["because"]})
    second = await stack.poll_one(turn_type)
    agent = second["agent"]
    assert agent["turn"] == 2 and agent["state"] == {"step": 1}
    assert agent["tool_results"] == [
        {"id": "c1", "name": "search", "ok": True, "output": ["because"], "error": None}
    ]
    assert agent["usage"]["tokens_in"] == 10 and agent["usage"]["tool_calls"] == 1
    done = {"agent": "done", "output": {"answer": "because"}, "tokens_in": 5}
    assert (
        await stack.post(f"/v1/tasks/{second['id']}/complete", {"turn": done})
    ).status_code == 200
    state = await stack.client.wait(run_id, timeout_s=WAIT_S)
    assert state.status == "completed" and bytes(state.output) == b'{"answer":"because"}'


def test_the_bridge_heartbeat_timeout_comes_from_its_variable_within_bounds() -> None:
    assert bridge_ack_wait_ms({}) == settings.task_ack_wait_ms_default
    assert bridge_ack_wait_ms({HEARTBEAT_ENV: " 2.5 "}) == 2_500
    for bad in ("0.1", "3601", "soon", "nan", "-1"):
        with pytest.raises(BridgeSettingError) as refused:
            bridge_ack_wait_ms({HEARTBEAT_ENV: bad})
        assert HEARTBEAT_ENV in str(refused.value) and "0.5..3600" in str(refused.value)
        assert refused.value.hint


async def test_results_with_a_poll_take_the_next_task_while_the_results_are_sent(
    stack: BridgeStack,
) -> None:
    """/v1/tasks/results with a poll: the next task is leased while the result is still on
    its way (two independent round trips); the answer comes once the result is stored."""
    task_type = unique("t")
    runs = [await start_one(stack, task_type, {"n": index}) for index in range(2)]
    first = await stack.poll_one(task_type)
    gated = GatedCommands(stack.bridge.commands)
    stack.bridge.commands = gated
    stack.bridge.result_wait_ms = 60_000  # (the answer waits for the result, held back)
    body = {"results": [{"id": first["id"], "output": 1}],
            "poll": {"task_types": [task_type], "timeout_ms": 10_000}}  # fmt: skip
    answering = asyncio.ensure_future(stack.post("/v1/tasks/results", body))
    try:
        await wait_for(lambda: gated.waiting == 1 and stack.bridge.held == 2, timeout_ms=10_000,
                       what="the next task leased while the result is held back")  # fmt: skip
    finally:
        gated.opened.set()
    answer = await answering
    assert answer.status_code == 200, answer.text
    reply = answer.json()
    assert [r["status"] for r in reply["results"]] == ["completed"], reply
    [second] = reply["tasks"]
    assert {first["run_id"], second["run_id"]} == set(runs), (first, second)
    last = await stack.post("/v1/tasks/results", {"results": [{"id": second["id"], "output": 2}]})
    assert [r["status"] for r in last.json()["results"]] == ["completed"], last.text
    for run_id in runs:
        assert (await stack.client.wait(run_id, timeout_s=WAIT_S)).status == "completed"


async def test_a_result_refused_before_it_was_stored_is_answered_so_and_its_task_comes_back(
    stack: BridgeStack,
) -> None:
    """A result the publisher refused is not "completed": its item answers the error, the
    lease is dropped (no bound held), and the task comes back, its attempt reported lost."""
    task_type = unique("t")
    run_id = await start_one(stack, task_type)
    first = await stack.poll_one(task_type)
    real = stack.bridge.commands
    stack.bridge.commands = RefusingCommands()
    reply = await stack.post("/v1/tasks/results", {"results": [{"id": first["id"], "output": 1}]})
    stack.bridge.commands = real
    assert reply.status_code == 200, reply.text
    [answer] = reply.json()["results"]
    assert answer.get("status") != "completed", answer
    assert answer["problem"]["status"] == 503, answer
    assert "was not stored" in answer["problem"]["detail"], answer
    assert stack.bridge.held == 0
    again = await stack.poll_one(task_type)  # after the heartbeat timeout, attempt 2
    assert (again["run_id"], again["attempt"]) == (run_id, 2), again
    done = await stack.post("/v1/tasks/results", {"results": [{"id": again["id"], "output": 2}]})
    assert [r["status"] for r in done.json()["results"]] == ["completed"], done.text
    assert (await stack.client.wait(run_id, timeout_s=WAIT_S)).status == "completed"
    assert sum(isinstance(e, StepLost) for e in await stack.events(run_id)) == 1
