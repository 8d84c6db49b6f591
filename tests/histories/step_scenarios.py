"""The golden scenarios of every step type other than `task`, for `make_golden`.

Each scenario is a full run (it ends) of a workflow written as users write it (JSON through
`kernel.workflow.parse_workflow`), driven by a fixed sequence of commands: the same commands
give the same bytes. Commands without `at_ms` are stamped by `tests.kernel_dsl.given` (1 s
after the previous one); a timer fires at the time it was due, stated here. Times are plain
epoch milliseconds from 1970, so the cron and RFC 3339 wake-ups below are easy to check.
"""

from __future__ import annotations

from typing import Final, Literal

from kernel.commands import (
    AnyCommand,
    DeliverEvent,
    FireTimer,
    RecordChild,
    ResolveApproval,
    TimerKind,
)
from kernel.timers import retry_timer_id
from kernel.workflow import WorkflowDef, parse_workflow
from steps import approvals
from steps.agent_parts import delay_timer_id
from steps.sub_workflow import child_run_id
from tests.kernel_dsl import (
    RUN_ID,
    UNSTAMPED,
    cancel,
    complete,
    fail,
    fire_retry,
    fire_step_timeout,
    fire_step_timer,
    raw,
    signal,
    start,
    started,
)

Scenario = tuple[AnyCommand, ...]


# --- commands the DSL does not have ------------------------------------------------------


def fire(
    timer_id: str, kind: TimerKind, step_id: str, attempt: int, *, at_ms: int = UNSTAMPED
) -> FireTimer:
    """A timer firing, named by its id."""
    return FireTimer(
        run_id=RUN_ID, at_ms=at_ms, timer_id=timer_id, kind=kind, step_id=step_id, attempt=attempt
    )


def deliver(name: str, payload: object, *, seq: int, at_ms: int = UNSTAMPED) -> DeliverEvent:
    """An external event published under `name`, the `seq`-th of the events stream."""
    return DeliverEvent(run_id=RUN_ID, at_ms=at_ms, name=name, payload=raw(payload), event_seq=seq)


def resolve(
    step_id: str,
    decision: Literal["approve", "reject"],
    *,
    key: str = "",
    by: str = "ana",
    comment: str = "",
    data: object = None,
) -> ResolveApproval:
    """A human's decision on the approval `key` (by default the approval step `step_id`)."""
    return ResolveApproval(
        run_id=RUN_ID,
        at_ms=UNSTAMPED,
        step_id=step_id,
        decision=decision,
        by=by,
        comment=comment,
        data=raw(data),
        key=key,
    )


def child(
    step_id: str,
    status: Literal["completed", "failed"],
    output: object = None,
    *,
    attempt: int = 1,
    error: str = "",
) -> RecordChild:
    """The child run of `attempt` of the sub_workflow step `step_id` reports its end."""
    return RecordChild(
        run_id=RUN_ID,
        at_ms=UNSTAMPED,
        step_id=step_id,
        child_run_id=child_run_id(RUN_ID, step_id, attempt),
        status=status,
        output=raw(output),
        error=error,
    )


def user_workflow(name: str, *steps: dict[str, object], **fields: object) -> WorkflowDef:
    """A workflow from its user JSON form (what a workflow file holds)."""
    return parse_workflow({"name": name, **fields, "steps": list(steps)})


# --- sleep, wait_signal, wait_for_event ---------------------------------------------------


def sleeps() -> Scenario:
    """A duration sleep, then a cron sleep, then a sleep until a time in the run input."""
    wf = user_workflow(
        "naps",
        {"id": "a", "task": "a"},
        {"id": "nap", "type": "sleep", "depends_on": ["a"], "config": {"duration": "30s"}},
        {"id": "tick", "type": "sleep", "depends_on": ["nap"], "config": {"cron": "*/5 * * * *"}},
        {"id": "due", "type": "sleep", "depends_on": ["tick"],
         "config": {"until_input_path": "wake.at"}},
        {"id": "b", "task": "b", "depends_on": ["due"]},
    )  # fmt: skip
    return (
        start(wf, {"wake": {"at": "1970-01-01T00:10:00Z"}}, seed=3),  # at 1 s
        complete("a", {"x": 1}),  # at 2 s: nap wakes at 32 s
        fire_step_timer("nap", at_ms=32_000),  # tick wakes at the next 5th minute: 300 s
        fire_step_timer("tick", at_ms=300_000),  # due wakes at 00:10:00, 600 s
        fire_step_timer("due", at_ms=600_000),
        complete("b", {"done": True}),
    )


def signals() -> Scenario:
    """A signal of another name is kept, `go` is consumed by the gate; `ack` times out and
    its on_failure handler recovers the run."""
    wf = user_workflow(
        "gated",
        {"id": "a", "task": "a"},
        {"id": "gate", "type": "wait_signal", "depends_on": ["a"], "config": {"signal": "go"}},
        {"id": "b", "task": "b", "depends_on": ["gate"]},
        {"id": "ack", "type": "wait_signal", "timeout": "30s", "on_failure": "escalate",
         "config": {"signal": "ack"}},
        {"id": "escalate", "task": "page.oncall"},
    )  # fmt: skip
    return (
        start(wf, {"ticket": 9}),  # at 1 s: ack waits until 31 s
        signal("noise", {"n": 1}, signal_id="sig-1"),
        complete("a", {"ready": True}),
        signal("go", {"ok": True}, signal_id="sig-2"),
        started("b", worker_id="w2"),
        fire_step_timeout("ack", at_ms=31_000),
        complete("escalate", {"paged": "ops"}),
        complete("b", {"shipped": True}),
    )


def external_events() -> Scenario:
    """One wait takes the matching event (not the other order's); another times out, which
    skips the step that runs only when the event came."""
    match = {"left": "order", "op": "eq", "right": "input.order"}
    wf = user_workflow(
        "await_payment",
        {"id": "a", "task": "a"},
        {"id": "paid", "type": "wait_for_event", "depends_on": ["a"], "timeout": "1m",
         "config": {"event": "order.paid", "match": match}},
        {"id": "shipped", "type": "wait_for_event", "timeout": "30s",
         "config": {"event": "order.shipped", "since": "run_start"}},
        {"id": "track", "task": "track", "depends_on": ["shipped"],
         "skip_if": {"step_id": "shipped", "field": "timeout", "op": "==", "value": True}},
        {"id": "receipt", "task": "receipt", "depends_on": ["paid"]},
    )  # fmt: skip
    return (
        start(wf, {"order": "A1"}),  # at 1 s: shipped gives up at 31 s
        complete("a", {"cart": 3}),
        deliver("order.paid", {"order": "B2"}, seq=3),  # another order's: not taken
        deliver("order.paid", {"order": "A1", "amount": 12}, seq=4),
        fire_step_timer("shipped", at_ms=31_000),
        complete("receipt", {"sent": True}),
    )


# --- map, agent_loop ----------------------------------------------------------------------


def map_items() -> Scenario:
    """Three items, two at a time; item 1 fails once and is retried."""
    wf = user_workflow(
        "fan_out",
        {"id": "a", "task": "a"},
        {"id": "m", "type": "map", "task": "work", "depends_on": ["a"],
         "retry": {"max_attempts": 2, "strategy": "fixed", "initial_delay": "1s"},
         "config": {"items_path": "xs", "max_concurrency": 2}},
        {"id": "b", "task": "b", "depends_on": ["m"]},
    )  # fmt: skip
    return (
        start(wf, seed=5),
        complete("a", {"xs": ["p", "q", "r"]}),
        complete("m.0", "P"),
        fail("m.1", "flaky", seed=77),
        fire(retry_timer_id("m.1", 2), "retry", "m.1", 2),
        complete("m.2", "R"),
        complete("m.1", "Q", attempt=2),
        complete("b", {"joined": 3}),
    )


AGENT_TOOLS: Final = {"search": "tool.search", "calc": "tool.calc"}
USAGE: Final = {"tokens_in": 4, "tokens_out": 6, "cost": 0.5}  # a turn's model usage


def turn(
    state: object, *calls: tuple[str, object], tokens: int = 10, cost: float = 0.25
) -> dict[str, object]:
    """A turn's result that goes on: Continue(state, tool calls), as a worker encodes it."""
    return {
        "agent": "continue",
        "state": state,
        "tool_calls": [{"name": name, "arguments": arguments} for name, arguments in calls],
        "tokens_in": tokens,
        "tokens_out": tokens // 2,
        "cost": cost,
    }


def agent_with_approval() -> Scenario:
    """Two turns: turn 1 calls two tools, `search` only once a human approved it; after the
    loop delay, turn 2 is done."""
    wf = user_workflow(
        "assistant",
        {"id": "a", "type": "agent_loop", "task": "think",
         "config": {"tools": AGENT_TOOLS, "approval_tools": ["search"],
                    "approval_timeout": "1h", "loop_delay": "2s", "max_turns": 5}},
        {"id": "after", "task": "after", "depends_on": ["a"]},
    )  # fmt: skip
    return (
        start(wf, {"goal": "answer"}),
        complete("a.turn1", turn({"step": 1}, ("search", {"q": "dag"}), ("calc", [1, 2]))),
        complete("a.turn1-tool1", 3),
        resolve("a", "approve", key="a.turn1-tool0", comment="fine"),
        complete("a.turn1-tool0", {"hits": 2}),  # at 5 s: the delay ends at 7 s
        fire(delay_timer_id("a", 1, 2), "step", "a", 1, at_ms=7_000),
        complete("a.turn2", {"agent": "done", "output": {"answer": 42}, **USAGE}),
        complete("after", {"posted": True}),
    )


def agent_at_its_limit() -> Scenario:
    """Turn 1 calls three tools: one fails for good (a result, not a failure), one is retried,
    one names no tool. Turn 2 is retried, then the loop stops at `max_turns`, completing with
    its last state (turn 2's own tool call never runs)."""
    wf = user_workflow(
        "researcher",
        {"id": "a", "type": "agent_loop", "task": "think",
         "retry": {"max_attempts": 2, "strategy": "fixed", "initial_delay": "1s"},
         "config": {"tools": AGENT_TOOLS, "max_turns": 2, "on_limit": "complete"}},
    )  # fmt: skip
    calls = (("calc", "1/0"), ("search", {"q": "x"}), ("translate", {"to": "fr"}))
    return (
        start(wf, {"goal": "survey"}, seed=8),
        complete("a.turn1", turn({"k": 1}, *calls)),
        fail("a.turn1-tool0", "division by zero", kind="non_retryable"),
        fail("a.turn1-tool1", "rate limited", seed=5),
        fire(retry_timer_id("a.turn1-tool1", 2), "retry", "a.turn1-tool1", 2),
        complete("a.turn1-tool1", {"hits": 0}, attempt=2),
        fail("a.turn2", "model busy", seed=21),
        fire(retry_timer_id("a.turn2", 2), "retry", "a.turn2", 2),
        complete("a.turn2", turn({"k": 2}, ("search", {"q": "y"})), attempt=2),
    )


def lost_attempts() -> Scenario:
    """Workers vanish (their tasks are delivered again) and no step has a retry policy: a
    task's attempts 1 (reported `lost`) and 2 (`heartbeat_timeout`, an older worker) are lost
    and attempt 3 completes; a map item, an agent turn and a tool call each lose one attempt
    and run again at once. Nothing fails: lost attempts are not failures."""
    wf = user_workflow(
        "resilient",
        {"id": "fetch", "task": "fetch", "timeout": "30s"},
        {"id": "m", "type": "map", "task": "work", "depends_on": ["fetch"],
         "config": {"items_path": "xs"}},
        {"id": "a", "type": "agent_loop", "task": "think", "depends_on": ["m"],
         "config": {"tools": AGENT_TOOLS, "max_turns": 3}},
    )  # fmt: skip
    lost = "worker lost: the task was delivered again (delivery 2)"
    return (
        start(wf, {"url": "u"}, seed=3),
        started("fetch", worker_id="w1"),
        fail("fetch", lost, kind="lost"),
        fail("fetch", lost, attempt=2, kind="heartbeat_timeout"),
        complete("fetch", {"xs": [1, 2]}, attempt=3),
        fail("m.0", lost, kind="lost"),
        complete("m.1", "two"),
        complete("m.0", "one", attempt=2),
        fail("a.turn1", lost, kind="lost"),
        complete("a.turn1", turn({"k": 1}, ("search", {"q": "x"})), attempt=2),
        fail("a.turn1-tool0", lost, kind="lost"),
        complete("a.turn1-tool0", {"hits": 1}, attempt=2),
        complete("a.turn2", {"agent": "done", "output": {"answer": 1}, **USAGE}),
    )


# --- approval, planner, sub_workflow, continue_as_new, cancel_on --------------------------


def approvals_granted() -> Scenario:
    """One approval approved by a human with data; another reaches its deadline, which
    approves it (`on_timeout`)."""
    wf = user_workflow(
        "release",
        {"id": "build", "task": "build"},
        {"id": "sign_off", "type": "approval", "depends_on": ["build"],
         "metadata": {"team": "ops"},
         "config": {"question": "Ship 1.2?", "description": "release notes attached"}},
        {"id": "legal", "type": "approval", "timeout": "10m",
         "config": {"question": "Any objection?", "on_timeout": "approve"}},
        {"id": "ship", "task": "ship", "depends_on": ["sign_off", "legal"]},
    )  # fmt: skip
    return (
        start(wf, {"version": "1.2"}),  # at 1 s: legal's deadline is at 601 s
        complete("build", {"artifact": "app-1.2.tar"}),
        resolve("sign_off", "approve", comment="go", data={"window": "tonight"}),
        fire(approvals.timer_id("legal", 1), "step", "legal", 1, at_ms=601_000),
        complete("ship", {"shipped": "1.2"}),
    )


def approval_rejected() -> Scenario:
    """A rejected approval fails its step for good; with no on_failure the run fails."""
    wf = user_workflow(
        "deploy",
        {"id": "plan", "task": "plan"},
        {"id": "gate", "type": "approval", "depends_on": ["plan"], "timeout": "1h",
         "config": {"question": "Apply the plan?", "on_timeout": "reject"}},
        {"id": "apply", "task": "apply", "depends_on": ["gate"]},
    )  # fmt: skip
    return (
        start(wf, {"env": "prod"}),
        complete("plan", {"changes": 4}),
        resolve("gate", "reject", by="bo", comment="too risky"),
    )


def planner_runs_its_plan() -> Scenario:
    """A first plan is rejected (it names a step it lacks), the retry's plan runs."""
    bad_plan = {"steps": [{"id": "x", "task": "t.x", "depends_on": ["nope"]}]}
    plan = {"steps": [
        {"id": "x", "task": "t.x"},
        {"id": "y", "task": "t.y", "depends_on": ["x"]},
        {"id": "z", "task": "t.z"},
    ]}  # fmt: skip
    wf = user_workflow(
        "planned",
        {"id": "a", "task": "a"},
        {"id": "p", "type": "planner", "task": "plan", "depends_on": ["a"],
         "retry": {"max_attempts": 2, "strategy": "fixed", "initial_delay": "1s"},
         "config": {"max_steps": 5, "allowed_tasks": ["t.x", "t.y", "t.z"]}},
        {"id": "b", "task": "b", "depends_on": ["p"]},
    )  # fmt: skip
    return (
        start(wf, seed=2),
        complete("a", {"goal": "g"}),
        complete("p", bad_plan),
        fire_retry("p", 2),
        complete("p", plan, attempt=2),
        complete("p.x", "X"),
        complete("p.z", "Z"),
        complete("p.y", "Y"),
        complete("b", {"used": ["y", "z"]}),
    )


def sub_workflows() -> Scenario:
    """The first child fails and the step is retried with a second child, which completes."""
    wf = user_workflow(
        "parent",
        {"id": "a", "task": "a"},
        {"id": "kid", "type": "sub_workflow", "depends_on": ["a"],
         "retry": {"max_attempts": 2, "strategy": "fixed", "initial_delay": "1s"},
         "config": {"workflow": "inner"}},
        {"id": "b", "task": "b", "depends_on": ["kid"]},
    )  # fmt: skip
    return (
        start(wf, {"n": 1}, seed=6),
        complete("a", {"n": 2}),
        child("kid", "failed", error="x crashed"),
        fire_retry("kid", 2),
        child("kid", "completed", {"n": 3}, attempt=2),
        complete("b", {"n": 4}),
    )


def continued_as_new() -> Scenario:
    """The run hands the work step's output to a fresh run and ends `continued_as_new`."""
    wf = user_workflow(
        "poller",
        {"id": "work", "task": "poll"},
        {"id": "again", "type": "continue_as_new", "depends_on": ["work"],
         "config": {"input_from": "work"}},
        timeout="1h",
    )  # fmt: skip
    return (
        start(wf, {"cursor": 0}),
        started("work"),
        complete("work", {"cursor": 50}),
    )


def logged() -> Scenario:
    """Two log steps record their messages around a task and pass its output on."""
    wf = user_workflow(
        "audit_trail",
        {"id": "begin", "type": "log", "config": {"message": "starting the import"}},
        {"id": "load", "task": "load", "depends_on": ["begin"]},
        {"id": "done", "type": "log", "depends_on": ["load"],
         "config": {"message": "import finished", "level": "warning"}},
    )  # fmt: skip
    return (
        start(wf, {"file": "a.csv"}),
        started("load"),
        complete("load", {"rows": 3}),
    )


def responded() -> Scenario:
    """A respond step answers 201 with part of its input, and the run goes on to a task."""
    wf = user_workflow(
        "echo",
        {"id": "check", "task": "check"},
        {"id": "answer", "type": "respond", "depends_on": ["check"],
         "config": {"status": 201, "headers": {"X-Run": "yes"}, "body_from": "body"}},
        {"id": "slow", "task": "slow", "depends_on": ["answer"]},
    )  # fmt: skip
    return (
        start(wf, {"body": "hi"}),
        started("check"),
        complete("check", {"body": {"echo": "hi"}}),
        started("slow"),
        complete("slow", {"done": True}),
    )


def cancelled_by_event() -> Scenario:
    """A `cancel_on` event for another order changes nothing; the matching one cancels the
    run, and the completed step's compensation runs."""
    wf = user_workflow(
        "order",
        {"id": "reserve", "task": "reserve", "compensate": "release"},
        {"id": "ship", "task": "ship", "depends_on": ["reserve"]},
        {"id": "release", "task": "release"},
        cancel_on={"event": "order.cancelled",
                   "match": {"left": "order", "op": "eq", "right": "input.order"}},
    )  # fmt: skip
    return (
        start(wf, {"order": "A1"}),
        complete("reserve", {"reservation": "R7"}),
        deliver("order.cancelled", {"order": "B2"}, seq=10),
        deliver("order.cancelled", {"order": "A1"}, seq=11),
        complete("release", {"released": True}),
        cancel("too late"),
    )


STEP_SCENARIOS: Final[dict[str, Scenario]] = {
    "sleep_duration_cron_until": sleeps(),
    "wait_signal_consumed_and_timed_out": signals(),
    "wait_for_event_delivered_and_timed_out": external_events(),
    "map_item_retried": map_items(),
    "agent_loop_tool_approval": agent_with_approval(),
    "agent_loop_limit_reached": agent_at_its_limit(),
    "approval_approved_and_deadline": approvals_granted(),
    "approval_rejected": approval_rejected(),
    "planner_rejected_then_materialized": planner_runs_its_plan(),
    "sub_workflow_child_failed_then_completed": sub_workflows(),
    "continue_as_new": continued_as_new(),
    "cancel_on_event": cancelled_by_event(),
    "log_recorded": logged(),
    "response_recorded": responded(),
    "lost_attempts_run_again": lost_attempts(),
}
