"""The touched-steps advance (kernel/decide.py `_touched`) against a full-scan oracle, over
random workflows that mix the step types (task, sleep, wait_signal, approval, map, planner,
sub_workflow, log) with conditions, handlers, retries and concurrency limits, and random
commands a shell, a worker or an operator could send (results of the task messages react
issued, timers it armed, signals, approvals, children's reports, cancel, terminate, reopen,
dead-letter discards, redeliveries), with restarts from a decoded snapshot between them.

Every decision is checked by tests/decide_oracle.py: equal to a full scan of every step, equal
on the state after an encode/decode round trip, and leaving no ready step behind.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Literal
from unittest.mock import patch

import msgspec
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from kernel import codec
from kernel.commands import (
    AnyCommand,
    CancelRun,
    ChildStatus,
    CompleteTask,
    DiscardDeadLetter,
    FailTask,
    FailureKind,
    RecordChild,
    ReopenRun,
    ResolveApproval,
    SendSignal,
    TaskStarted,
    TerminateRun,
)
from kernel.decide import decide
from kernel.effects import EnqueueTask
from kernel.errors import WorkflowInvalidError
from kernel.reopen import REOPENABLE_STATUSES, dead_letters
from kernel.state import is_terminal
from kernel.workflow import WorkflowDef, parse_workflow
from steps.sub_workflow import child_run_id
from tests import strategies
from tests.decide_oracle import oracle_decide
from tests.strategies import RUN_ID, Draw, Driver, outputs

PROPERTY = settings(
    max_examples=int(os.environ.get("ORACLE_EXAMPLES", "200")),  # more: a deeper search
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
    ],
)
TYPES = ("task", "task", "sleep", "wait_signal", "approval", "map", "planner", "sub_workflow")
TYPES_MORE = ("log",)
SIGNALS = ("go", "stop")


@st.composite
def mixed_workflows(draw: st.DrawFn) -> WorkflowDef:
    """A valid workflow of 1..8 steps of mixed types (a map depends on one step)."""
    count = draw(st.integers(1, 8))
    steps: list[dict[str, Any]] = []
    ids = [f"s{i}" for i in range(count)]
    handlers = draw(st.integers(0, 2)) if count > 2 else 0
    body, handler_ids = ids[: count - handlers], ids[count - handlers :]
    for index, step_id in enumerate(body):
        kind = draw(st.sampled_from(TYPES + TYPES_MORE))
        earlier = body[:index]
        deps = draw(st.lists(st.sampled_from(earlier), unique=True, max_size=3)) if earlier else []
        if kind == "map":
            if not earlier:
                kind = "task"
            else:
                deps = [draw(st.sampled_from(earlier))]
        step: dict[str, Any] = {"id": step_id, "type": kind, "depends_on": deps}
        if kind in ("task", "map"):
            step["task"] = "work"
        if kind == "planner":
            step["task"] = "plan"
            step["config"] = {"max_steps": 4, "allowed_types": ["task", "map", "log"]}
        if kind == "sleep":
            step["config"] = {"duration": draw(st.sampled_from(("0s", "1s", "5m")))}
        if kind == "wait_signal":
            step["config"] = {"signal": draw(st.sampled_from(SIGNALS))}
        if kind == "approval":
            step["config"] = {
                "question": "ok?",
                "on_timeout": draw(st.sampled_from(("approve", "reject", "fail"))),
            }
        if kind == "map":
            step["config"] = {
                "items_path": "items",
                "max_concurrency": draw(st.integers(1, 3)),
                "mode": draw(st.sampled_from(("fail_fast", "collect"))),
            }
        if kind == "sub_workflow":
            step["config"] = {"workflow": "child", "detach": draw(st.booleans())}
        if kind == "log":
            step["config"] = {"message": "hello"}
        conditioned: bool = draw(st.booleans())
        if deps and conditioned:
            step["skip_if"] = {
                "step_id": draw(st.sampled_from(deps)),
                "field": "flag",
                "op": "==",
                "value": True,
            }
        if draw(st.booleans()):
            step["retry"] = {"max_attempts": draw(st.integers(1, 3)), "initial_delay": "1s"}
        if draw(st.integers(0, 3)) == 0:
            step["timeout"] = "10m"
        steps.append(step)
    for handler in handler_ids:
        owner = draw(st.sampled_from(steps))
        role = draw(st.sampled_from(("on_failure", "compensate")))
        if role in owner:
            continue
        owner[role] = handler
        steps.append({"id": handler, "task": "handle"})
    document: dict[str, Any] = {"name": "mixed", "steps": steps}
    if draw(st.integers(0, 3)) == 0:
        document["concurrency"] = {"max_steps": draw(st.integers(1, 3))}
    try:
        return parse_workflow(msgspec.json.encode(document))
    except WorkflowInvalidError as error:
        assume(False)
        raise AssertionError("unreachable") from error


def _plan(draw: Draw) -> msgspec.Raw:
    count = draw(st.integers(0, 3))
    steps = []
    for index in range(count):
        deps = (
            draw(
                st.lists(st.sampled_from([f"p{i}" for i in range(index)]), unique=True, max_size=2)
            )
            if index
            else []
        )
        step: dict[str, Any] = {"id": f"p{index}", "task": "work", "depends_on": deps}
        shape = draw(st.integers(0, 3))
        if len(deps) == 1 and shape == 0:  # a map over its one dependency's items
            step |= {"type": "map", "config": {"items_path": "items"}}
        elif shape == 1:  # a step that completes as it starts
            step = {
                "id": f"p{index}",
                "type": "log",
                "depends_on": deps,
                "config": {"message": "plan"},
            }
        if deps and draw(st.integers(0, 3)) == 0:
            step["skip_if"] = {"step_id": deps[0], "field": "flag", "op": "==", "value": True}
        steps.append(step)
    if draw(st.integers(0, 9)) == 0:
        steps.append({"id": "bad", "task": "work", "depends_on": ["nowhere"]})
    return msgspec.Raw(msgspec.json.encode({"steps": steps}))


def _output(draw: Draw, task: EnqueueTask) -> msgspec.Raw:
    if task.task == "plan" and draw(st.integers(0, 5)):
        return _plan(draw)
    if draw(st.integers(0, 2)):
        items = draw(st.lists(st.integers(0, 9), max_size=3))
        return msgspec.Raw(msgspec.json.encode({"items": items, "flag": draw(st.booleans())}))
    return draw(outputs(oversize=False))


@dataclass
class Shell:
    """The driver plus the task messages react issued that no result answered yet."""

    driver: Driver
    tasks: dict[tuple[str, int], EnqueueTask] = field(default_factory=dict)
    signals: int = 0

    def send(self, command: AnyCommand) -> None:
        record = self.driver.send(command)
        for effect in record.effects:
            if isinstance(effect, EnqueueTask):
                self.tasks[(effect.step_id, effect.attempt)] = effect


def _live(shell: Shell, step_type: str) -> list[str]:
    state = shell.driver.state
    return [
        step.step_id
        for step, step_def in zip(state.steps, state.step_defs, strict=True)
        if step_def.type == step_type and step.status in ("scheduled", "running")
    ]


def _kinds(draw: Draw, shell: Shell) -> list[str]:
    """The kinds of command that can be sent now (progress weighted over trouble)."""
    state = shell.driver.state
    kinds = ["signal", "duplicate"]
    if draw(st.integers(0, 15)) == 0:
        kinds += ["cancel", "terminate"]
    if shell.tasks:
        kinds += ["complete"] * 6 + ["fail", "fail", "started"]
    if shell.driver.armed:
        kinds += ["timer"] * 3
    if _live(shell, "approval"):
        kinds += ["approve"] * 2
    if _live(shell, "sub_workflow"):
        kinds += ["child"] * 2
    if state.status in REOPENABLE_STATUSES:
        kinds += ["reopen"] * 4
    if dead_letters(state):
        kinds += ["discard"]
    return kinds


def _command(draw: Draw, shell: Shell) -> AnyCommand | None:
    """A command a worker, a timer, a client or an operator could send now."""
    kind = draw(st.sampled_from(_kinds(draw, shell)))
    now = shell.driver.now + draw(st.integers(0, 100_000))
    seed = draw(st.integers(0, 2**32))
    if kind in ("complete", "fail", "started"):
        return _task_result(draw, shell, kind, now, seed)
    if kind == "timer":
        return shell.driver.armed[draw(st.sampled_from(sorted(shell.driver.armed)))]
    if kind == "duplicate":
        return draw(st.sampled_from(shell.driver.records)).command
    return _client_command(draw, shell, kind, now, seed)


def _task_result(draw: Draw, shell: Shell, kind: str, now: int, seed: int) -> AnyCommand:
    key = draw(st.sampled_from(sorted(shell.tasks)))
    task = shell.tasks[key] if kind == "started" else shell.tasks.pop(key)
    base: dict[str, Any] = {
        "run_id": RUN_ID,
        "at_ms": now,
        "seed": seed,
        "step_id": task.step_id,
        "attempt": task.attempt,
    }
    if kind == "started":
        return TaskStarted(**base, worker_id="w1")
    if kind == "complete":
        return CompleteTask(**base, output=_output(draw, task))
    failures: tuple[FailureKind, ...] = ("error", "non_retryable", "lost")
    failure = draw(st.sampled_from(failures))
    return FailTask(**base, error="boom", kind=failure)


def _client_command(draw: Draw, shell: Shell, kind: str, now: int, seed: int) -> AnyCommand:
    state = shell.driver.state
    at: dict[str, Any] = {"run_id": RUN_ID, "at_ms": now, "seed": seed}
    if kind == "signal":
        shell.signals += 1
        name = draw(st.sampled_from(SIGNALS))
        return SendSignal(**at, name=name, signal_id=f"sig-{shell.signals}")
    if kind == "approve":
        step_id = draw(st.sampled_from(_live(shell, "approval")))
        decisions: tuple[Literal["approve", "reject"], ...] = ("approve", "reject")
        decision = draw(st.sampled_from(decisions))
        return ResolveApproval(**at, step_id=step_id, decision=decision, by="me")
    if kind == "child":
        step_id = draw(st.sampled_from(_live(shell, "sub_workflow")))
        step = state.step(step_id)
        assert step is not None
        statuses: tuple[ChildStatus, ...] = ("started", "completed", "failed", "cancelled")
        status = draw(st.sampled_from(statuses))
        child = child_run_id(RUN_ID, step_id, step.attempt)
        output = msgspec.Raw(b'{"flag": false}')
        return RecordChild(**at, step_id=step_id, child_run_id=child, status=status, output=output)
    if kind == "reopen":
        from_step = draw(st.sampled_from(("", *state.step_ids)))
        return ReopenRun(**at, from_step=from_step, reopens=state.reopens)
    if kind == "discard":
        letter = draw(st.sampled_from(dead_letters(state)))
        return DiscardDeadLetter(**at, step_id=letter.step_id, attempt=letter.attempt)
    if kind == "cancel":
        return CancelRun(**at, reason="stop")
    assert kind == "terminate", kind
    return TerminateRun(**at, reason="stop")


@PROPERTY
@given(mixed_workflows(), st.data())
def test_every_decision_is_the_full_scans_over_mixed_step_types(
    workflow: WorkflowDef, data: st.DataObject
) -> None:
    checked: list[int] = []
    with patch.object(strategies, "decide", oracle_decide(decide, checked)):
        shell = Shell(Driver(workflow))
        shell.driver.start(at_ms=1_000, seed=7, input=b'{"items": [1, 2]}')
        for effect in shell.driver.records[-1].effects:
            if isinstance(effect, EnqueueTask):
                shell.tasks[(effect.step_id, effect.attempt)] = effect
        ended = 0
        for _ in range(80):
            if is_terminal(shell.driver.state):
                ended += 1
                if ended > 8:
                    break
            action = data.draw(st.integers(0, 19))
            if action == 0:
                shell.driver.restart()
                continue
            if action == 1:  # a restart from a snapshot: the state decoded from its bytes
                shell.driver.state = codec.decode_state(codec.encode(shell.driver.state))
                continue
            command = _command(data.draw, shell)
            if command is None:
                continue
            shell.send(command)
    assert checked, "decisions were checked"
    tags = {type(e).__name__ for e in shell.driver.events}
    for tag in sorted(tags):
        event(tag)
    event(f"final {shell.driver.state.status}")


def test_a_plan_step_its_owner_skipped_earlier_in_the_pass_is_not_started() -> None:
    """A plan's map fails at its start (its dependency's output has no items) in the pass
    that also finds its sibling ready: the planner skips the sibling and fails, its on_failure
    handler starts, and the pass must not then start the skipped sibling (it did, from the
    pass's first state: `_scheduled` asserted 'plan.y' scheduled: skipped, and the run stalled
    on that command)."""
    workflow = parse_workflow(msgspec.json.encode({"name": "w", "steps": [
        {"id": "plan", "type": "planner", "task": "plan", "on_failure": "h",
         "config": {"max_steps": 8, "allowed_types": ["task", "map"]}},
        {"id": "h", "task": "handle"},
    ]}))  # fmt: skip
    plan = {"steps": [
        {"id": "p0", "task": "work"},
        {"id": "m", "type": "map", "task": "work", "depends_on": ["p0"],
         "config": {"items_path": "items"}},
        {"id": "y", "task": "work", "depends_on": ["p0"]},
    ]}  # fmt: skip
    with patch.object(strategies, "decide", oracle_decide(decide)):
        driver = Driver(workflow)
        driver.start(at_ms=1)
        for step_id, output in (("plan", plan), ("plan.p0", {"no_items": 1})):
            output_raw = msgspec.Raw(msgspec.json.encode(output))
            driver.send(
                CompleteTask(run_id=RUN_ID, at_ms=2, step_id=step_id, attempt=1, output=output_raw)
            )
    statuses = {step.step_id: step.status for step in driver.state.steps}
    assert statuses == {
        "plan": "failed", "h": "scheduled", "plan.p0": "completed", "plan.m": "failed",
        "plan.y": "skipped",
    }, statuses  # fmt: skip
    assert driver.state.status == "running"
