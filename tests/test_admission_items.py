"""Every task of a limited type takes a concurrency slot, whatever step type enqueues it
(kernel/admission_live.py): a task step, a map's items, an agent loop's turns and tool
calls are live while their run would publish them, and no longer once they ended.
Given/when/then over the pure kernel."""

from __future__ import annotations

from kernel.admission_live import LiveTask, is_live, live_tasks
from kernel.workflow import StepDef, WorkflowDef
from tests.kernel_dsl import (
    cancel,
    complete,
    fail,
    fire_retry,
    given,
    raw,
    retry,
    start,
    task,
    workflow,
)

WORK = frozenset(("work",))


def live(step_id: str, attempt: int = 1, task_type: str = "work") -> LiveTask:
    return LiveTask(step_id=step_id, attempt=attempt, task=task_type)


def fan(max_concurrency: int = 10, retries: int = 1) -> WorkflowDef:
    config = raw({"max_concurrency": max_concurrency})
    step = StepDef(
        id="m", type="map", task="work", depends_on=("a",), config=config, retry=retry(retries)
    )
    return workflow(task("a", task_name="prep"), step)


def test_a_task_step_is_live_until_it_completes() -> None:
    wf = workflow(task("a", task_name="work"), task("b", "a", task_name="other"))
    running = given(start(wf))
    assert live_tasks(running.state, WORK) == {live("a")}
    done = given(start(wf), complete("a", 1))
    assert live_tasks(done.state, WORK) == frozenset()  # b is of another type
    assert live_tasks(done.state, frozenset(("other",))) == {live("b", task_type="other")}


def test_every_item_of_a_map_is_a_live_task_of_the_map_s_type() -> None:
    state = given(start(fan()), complete("a", [1, 2, 3])).state
    assert live_tasks(state, WORK) == {live("m.0"), live("m.1"), live("m.2")}
    assert is_live(state, "m.1", 1) and not is_live(state, "m.1", 2)


def test_an_item_that_completes_is_no_longer_live_and_the_next_one_is() -> None:
    items = (start(fan(max_concurrency=2)), complete("a", [1, 2, 3]))
    assert live_tasks(given(*items).state, WORK) == {live("m.0"), live("m.1")}
    after = given(*items, complete("m.0", "x")).state
    assert live_tasks(after, WORK) == {live("m.1"), live("m.2")}


def test_an_item_waiting_to_retry_holds_no_slot_and_its_next_attempt_does() -> None:
    items = (start(fan(retries=2)), complete("a", [1]))
    failed = given(*items, fail("m.0", "flaky")).state
    assert live_tasks(failed, WORK) == frozenset()
    assert not is_live(failed, "m.0", 1)
    again = given(*items, fail("m.0", "flaky"), fire_retry("m.0", 2)).state
    assert live_tasks(again, WORK) == {live("m.0", attempt=2)}


def test_a_cancelled_run_has_no_live_task() -> None:
    state = given(start(fan()), complete("a", [1, 2]), cancel("stop")).state
    assert live_tasks(state, WORK) == frozenset()


def _agent() -> WorkflowDef:
    config = raw({"tools": {"search": "tool.search"}})
    return workflow(StepDef(id="a", type="agent_loop", task="think", config=config))


def _go_on(*tools: str) -> object:
    calls = [{"name": name, "arguments": index} for index, name in enumerate(tools)]
    return {"agent": "continue", "state": None, "tool_calls": calls}


def test_an_agent_s_turn_then_its_tool_calls_are_live_tasks_of_their_types() -> None:
    types = frozenset(("think", "tool.search"))
    turn = given(start(_agent())).state
    assert live_tasks(turn, types) == {live("a.turn1", task_type="think")}
    tools = given(start(_agent()), complete("a.turn1", _go_on("search", "search"))).state
    assert live_tasks(tools, types) == {
        live("a.turn1-tool0", task_type="tool.search"),
        live("a.turn1-tool1", task_type="tool.search"),
    }
    one_done = given(
        start(_agent()), complete("a.turn1", _go_on("search", "search")),
        complete("a.turn1-tool0", "found"),
    ).state  # fmt: skip
    assert live_tasks(one_done, types) == {live("a.turn1-tool1", task_type="tool.search")}
