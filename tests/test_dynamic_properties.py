"""Hypothesis: the kernel properties hold for runs with a `map` and a `planner` step.

Runs are driven as in tests/strategies.py (every event comes from `decide`), by a driver that
also sees map items as live attempts (`<map>.<index>`) and answers planners with drawn plans,
valid or not. Checked on every run: replay equals incremental, the fold splits anywhere, the
codec round-trips state, re-deciding a handled command yields nothing, terminal is absorbing,
and every counter stays within its bound (items in flight, item attempts, dynamic steps).
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kernel import limits
from kernel.commands import CompleteTask, Rejection
from kernel.decide import decide
from kernel.reducer import fold, fold_from
from kernel.state import RunState, is_terminal
from kernel.workflow import RetryPolicy, StepDef, WorkflowDef
from tests.strategies import (
    KIND_WEIGHTS,
    Action,
    Driver,
    Run,
    draw_command,
    outputs,
    seeds,
)

PLAN_TASKS = ("t.x", "t.y")


@st.composite
def dynamic_workflows(draw: st.DrawFn) -> WorkflowDef:
    """a -> m (map) -> p (planner) -> b, with drawn map and planner configs and retries."""
    policy = draw(
        st.none()
        | st.builds(RetryPolicy, max_attempts=st.integers(1, 3), initial_delay_ms=st.just(100))
    )
    map_config = {
        "max_concurrency": draw(st.integers(1, 3)),
        "mode": draw(st.sampled_from(("fail_fast", "collect"))),
        "max_items": draw(st.integers(1, 6)),
    }
    planner_config = {
        "max_steps": draw(st.integers(1, 4)),
        "allowed_types": draw(st.sampled_from((["task"], ["task", "map", "planner"]))),
        "max_depth": draw(st.integers(1, 2)),
    }
    raw = msgspec.json.encode
    return WorkflowDef(
        name="dyn",
        steps=(
            StepDef(id="a", task="a"),
            StepDef(
                id="m",
                type="map",
                task="w",
                depends_on=("a",),
                config=msgspec.Raw(raw(map_config)),
                retry=policy,
                timeout_ms=draw(st.none() | st.just(5_000)),
            ),
            StepDef(
                id="p",
                type="planner",
                task="plan",
                depends_on=("m",),
                config=msgspec.Raw(raw(planner_config)),
                retry=policy,
            ),
            StepDef(id="b", task="b", depends_on=("p",)),
        ),
        timeout_ms=draw(st.none() | st.just(10**9)),
    )


@st.composite
def plans(draw: st.DrawFn) -> object:
    """A plan: mostly valid small DAGs of tasks (some with a map or a nested planner), or a
    broken one."""
    if draw(st.integers(0, 4)) == 0:
        return draw(st.sampled_from(({"steps": "x"}, [1], {"steps": [{"id": "a.b"}]})))
    count = draw(st.integers(0, 4))
    steps: list[dict[str, object]] = []
    for index in range(count):
        earlier = [f"s{i}" for i in range(index)]
        step: dict[str, object] = {"id": f"s{index}", "task": draw(st.sampled_from(PLAN_TASKS))}
        if earlier:
            step["depends_on"] = draw(st.lists(st.sampled_from(earlier), unique=True, max_size=2))
        kind = draw(st.integers(0, 5))
        depends_on = step.get("depends_on")
        if kind == 0 and isinstance(depends_on, list) and len(depends_on) == 1:
            step["type"] = "map"
        elif kind == 1:
            step["type"] = "planner"
        steps.append(step)
    return {"steps": steps}


@dataclass
class DynamicDriver(Driver):
    """A driver whose live attempts include map items (and not the map step itself)."""

    def live_attempts(self) -> tuple[tuple[str, int, str], ...]:
        live = [
            (step.step_id, step.attempt, step.status)
            for step, step_def in zip(self.state.steps, self.state.step_defs, strict=True)
            if step.status in ("scheduled", "running") and step_def.type != "map"
        ]
        for map_state in self.state.dynamic.maps:
            for index in range(map_state.count):
                item = map_state.item(index)
                if item.status == "scheduled":
                    live.append((f"{map_state.step_id}.{index}", item.attempt, "scheduled"))
        return tuple(live)


def _answer(draw: st.DrawFn, driver: DynamicDriver, command: object) -> object:
    """A completion gets an output that fits its step: lists for map inputs, plans for
    planners."""
    if not isinstance(command, CompleteTask):
        return command
    step_def = driver.state.step_def(command.step_id)
    if step_def is None:
        return command
    if step_def.type == "planner":
        value = msgspec.Raw(msgspec.json.encode(draw(plans())))
    elif any(s.type == "map" and command.step_id in s.depends_on for s in driver.state.step_defs):
        value = msgspec.Raw(msgspec.json.encode(draw(st.lists(st.integers(0, 9), max_size=7))))
    else:
        value = draw(outputs(oversize=False))
    return msgspec.structs.replace(command, output=value)


def _pick(draw: st.DrawFn, options: tuple[Action, ...]) -> Action:
    """A kind of command by KIND_WEIGHTS, completions favoured (so plans and maps finish)."""
    weights = [KIND_WEIGHTS[option] * (4 if option == "complete" else 1) for option in options]
    pick = draw(st.integers(0, sum(weights) - 1))
    for option, weight in zip(options, weights, strict=True):
        pick -= weight
        if pick < 0:
            return option
    raise AssertionError("weights do not cover the pick")


@st.composite
def dynamic_runs(draw: st.DrawFn) -> Run:
    workflow = draw(dynamic_workflows())
    driver = DynamicDriver(workflow)
    driver.start(at_ms=draw(st.integers(0, 10**9)), seed=draw(seeds), input=b'{"q":1}')
    after_terminal = draw(st.integers(0, 4))
    for _ in range(80):
        if is_terminal(driver.state):
            if after_terminal == 0:
                break
            after_terminal -= 1
        kind = _pick(draw, (*driver.available(), "restart"))
        if kind == "restart":
            driver.restart()
            continue
        command = _answer(draw, driver, draw_command(draw, driver, kind, oversize=False))
        driver.send(command)  # type: ignore[arg-type]
    return Run(workflow=workflow, records=tuple(driver.records))


def _check_counters(state: RunState) -> None:
    assert state.dynamic.steps_added <= limits.dynamic_steps_per_run_max
    assert len(state.steps) == len(state.step_defs) == len(state.step_ids)
    for map_state in state.dynamic.maps:
        step_def = state.step_def(map_state.step_id)
        assert step_def is not None
        config = msgspec.json.decode(bytes(step_def.config))
        assert 0 <= map_state.active <= config.get("max_concurrency", 100)
        assert map_state.done + map_state.active <= map_state.next_index <= map_state.count
        policy = step_def.retry or RetryPolicy()
        for index in range(map_state.count):
            item = map_state.item(index)  # lost attempts are not failures
            assert item.attempt <= policy.max_attempts + item.lost_attempts
            assert item.lost_attempts <= limits.lost_attempts_max
    for step in state.steps:
        assert "." not in step.step_id or state.step(step.step_id.rpartition(".")[0]) is not None


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(dynamic_runs())
def test_kernel_properties_hold_with_maps_and_planners(run: Run) -> None:
    events = run.events
    final = run.final
    assert fold(events) == final  # replay equals incremental
    split = len(events) // 2
    assert fold_from(fold(events[:split]), events[split:]) == final
    assert msgspec.json.decode(msgspec.json.encode(final), type=RunState) == final
    terminal_seen = False
    for record in run.records:
        if terminal_seen:
            assert not record.events, f"{record.command} after the end decided {record.events}"
        if record.events:
            again = decide(record.after, record.command)
            assert isinstance(again, Rejection) or again == (), (record.command, again)
        _check_counters(record.after)
        terminal_seen = terminal_seen or is_terminal(record.after)
