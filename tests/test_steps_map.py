"""Given/when/then for the `map` step type: fan-out over a list, bounded, joined in order."""

from __future__ import annotations

import cProfile
import random

import msgspec
import pytest

from kernel.commands import AnyCommand, FireTimer
from kernel.decide import decide
from kernel.effects import ArmTimer, CancelTimer, EnqueueTask
from kernel.errors import WorkflowInvalidError
from kernel.events import (
    MapExpanded,
    MapItemCompleted,
    MapItemFailed,
    MapItemScheduled,
    RunFailed,
    StepCompleted,
    StepFailed,
    StepScheduled,
)
from kernel.react import react, resume
from kernel.reducer import evolve
from kernel.state import RunState
from kernel.timers import retry_timer_id, step_timeout_timer_id
from kernel.workflow import RetryPolicy, StepDef, WorkflowDef, parse_workflow
from steps.map import map_of
from tests.kernel_dsl import complete, fail, given, raw, retry, start, task, workflow


def map_step(
    config: object,
    *,
    step_id: str = "m",
    depends_on: str = "a",
    retry_policy: RetryPolicy | None = None,
    timeout_ms: int | None = None,
) -> StepDef:
    return StepDef(
        id=step_id,
        type="map",
        task="work",
        depends_on=(depends_on,),
        config=raw(config),
        retry=retry_policy,
        timeout_ms=timeout_ms,
    )


def fan(
    config: object, *, retry_policy: RetryPolicy | None = None, timeout_ms: int | None = None
) -> WorkflowDef:
    step = map_step(config, retry_policy=retry_policy, timeout_ms=timeout_ms)
    return workflow(task("a"), step, task("b", "m"))


TWO_AT_A_TIME = workflow(
    task("a"), map_step({"items_path": "xs", "max_concurrency": 2}), task("b", "m")
)


def fire_item_retry(item_id: str, attempt: int) -> FireTimer:
    return FireTimer(
        run_id="r1",
        at_ms=-1,
        timer_id=retry_timer_id(item_id, attempt),
        kind="retry",
        step_id=item_id,
        attempt=attempt,
    )


def test_a_map_expands_and_schedules_up_to_max_concurrency_items() -> None:
    when = given(start(TWO_AT_A_TIME)).when(complete("a", {"xs": ["p", "q", "r"]}))
    at = when.at_ms
    when.then_includes(
        StepScheduled(step_id="m", attempt=1, input=raw({"xs": ["p", "q", "r"]}), at_ms=at),
        MapExpanded(step_id="m", attempt=1, count=3, at_ms=at),
        MapItemScheduled(step_id="m", index=0, attempt=1, at_ms=at),
        MapItemScheduled(step_id="m", index=1, attempt=1, at_ms=at),
    )
    when.then_lacks(MapItemScheduled, index=2)
    tasks = [e for e in when.effects if isinstance(e, EnqueueTask)]
    assert [(t.step_id, t.task, bytes(t.input), t.msg_id) for t in tasks] == [
        ("m.0", "work", b'"p"', "r1:m.0:1~00000000"),  # (the run's seed: 0)
        ("m.1", "work", b'"q"', "r1:m.1:1~00000000"),
    ]


def test_an_item_ending_starts_the_next_and_the_last_completes_the_map_in_input_order() -> None:
    items = given(start(TWO_AT_A_TIME), complete("a", {"xs": ["p", "q", "r"]}))
    after_one = items.when(complete("m.1", "Q"))
    after_one.then(
        MapItemCompleted(step_id="m", index=1, attempt=1, output=raw("Q"), at_ms=after_one.at_ms),
        MapItemScheduled(step_id="m", index=2, attempt=1, at_ms=after_one.at_ms),
    )
    last = given(
        start(TWO_AT_A_TIME),
        complete("a", {"xs": ["p", "q", "r"]}),
        complete("m.1", "Q"),
        complete("m.2", "R"),
    ).when(complete("m.0", "P"))
    at = last.at_ms
    last.then(
        MapItemCompleted(step_id="m", index=0, attempt=1, output=raw("P"), at_ms=at),
        StepCompleted(step_id="m", attempt=1, output=raw(["P", "Q", "R"]), at_ms=at),
        StepScheduled(step_id="b", attempt=1, input=raw(["P", "Q", "R"]), at_ms=at),
    )


def test_fail_fast_the_first_item_failing_for_good_fails_the_map_and_the_run() -> None:
    when = given(start(TWO_AT_A_TIME), complete("a", {"xs": [1, 2, 3]})).when(
        fail("m.1", "no", kind="non_retryable")
    )
    failed = [e for e in when.events if isinstance(e, StepFailed)]
    assert [(e.step_id, e.will_retry) for e in failed] == [("m", False)]
    assert "item 1 failed: no" in failed[0].error.message
    when.then_includes(
        MapItemFailed(
            step_id="m",
            index=1,
            attempt=1,
            error=failed[0].error.__class__(message="no", kind="non_retryable"),
            will_retry=False,
            at_ms=when.at_ms,
        )
    )
    assert any(isinstance(e, RunFailed) and e.failed_step_id == "m" for e in when.events)
    # The other item's late result is not for a live map: nothing.
    given(
        start(TWO_AT_A_TIME),
        complete("a", {"xs": [1, 2, 3]}),
        fail("m.1", "no", kind="non_retryable"),
    ).when(complete("m.0", 1)).then_nothing()


def test_collect_keeps_failures_as_values_in_the_output() -> None:
    wf = fan({"mode": "collect", "max_concurrency": 5})
    when = given(start(wf), complete("a", [1, 2, 3]), fail("m.1", "bad", kind="non_retryable"),
                 complete("m.0", "one")).when(complete("m.2", "three"))  # fmt: skip
    output = [bytes(e.output) for e in when.events if isinstance(e, StepCompleted)]
    assert msgspec.json.decode(output[0]) == [
        "one",
        {"error": {"message": "bad", "kind": "non_retryable"}},
        "three",
    ]
    when.then_state(steps={"m": "completed", "b": "scheduled"})


def test_an_item_retries_under_the_maps_retry_policy_with_its_own_attempts() -> None:
    wf = fan({"max_concurrency": 2}, retry_policy=retry(3))
    failed = given(start(wf), complete("a", [10, 20])).when(fail("m.1", "flaky"))
    at = failed.at_ms
    failed.then_includes(
        MapItemFailed(
            step_id="m",
            index=1,
            attempt=1,
            error=msgspec.convert({"message": "flaky"}, type=_error_type()),
            will_retry=True,
            at_ms=at,
            due_at_ms=at + 1_000,
        )
    )
    timers = [e for e in failed.effects if isinstance(e, ArmTimer)]
    assert [(t.timer_id, t.fire_at_ms) for t in timers] == [(retry_timer_id("m.1", 2), at + 1_000)]
    retried = given(start(wf), complete("a", [10, 20]), fail("m.1", "flaky")).when(
        fire_item_retry("m.1", 2)
    )
    retried.then(MapItemScheduled(step_id="m", index=1, attempt=2, at_ms=retried.at_ms))
    tasks = [e for e in retried.effects if isinstance(e, EnqueueTask)]
    assert [(t.step_id, t.attempt, bytes(t.input)) for t in tasks] == [("m.1", 2, b"20")]
    stale = given(start(wf), complete("a", [10, 20]), fail("m.1", "flaky"),
                  fire_item_retry("m.1", 2))  # fmt: skip
    stale.when(complete("m.1", "late", attempt=1)).then_nothing()
    stale.when(fire_item_retry("m.1", 2)).then_nothing()


def _error_type() -> type:
    from kernel.events import ErrorInfo

    return ErrorInfo


def test_an_item_timeout_fails_that_attempt_and_retries_it() -> None:
    wf = fan({}, retry_policy=retry(2), timeout_ms=5_000)
    started = given(start(wf)).when(complete("a", [1]))
    timers = [e for e in started.effects if isinstance(e, ArmTimer)]
    assert [(t.timer_id, t.command.kind) for t in timers] == [
        (step_timeout_timer_id("m.0", 1), "step_timeout")
    ]
    timed_out = given(start(wf), complete("a", [1])).when(timers[0].command)
    failures = [e for e in timed_out.events if isinstance(e, MapItemFailed)]
    assert [(e.index, e.error.kind, e.will_retry) for e in failures] == [(0, "timeout", True)]


def test_an_empty_list_completes_the_map_with_an_empty_list() -> None:
    when = given(start(fan({}))).when(complete("a", []))
    when.then_includes(StepCompleted(step_id="m", attempt=1, output=raw([]), at_ms=when.at_ms))


@pytest.mark.parametrize(
    ("output", "config", "message"),
    [
        ({"xs": 3}, {"items_path": "xs"}, "not an array"),
        ({"ys": []}, {"items_path": "xs"}, "no field 'xs'"),
        ([1, 2, 3], {"max_items": 2}, "3 items; max_items is 2"),
        ("text", {"items_path": "a.b"}, "not an object"),
    ],
)
def test_a_map_without_a_usable_list_fails_for_good_with_a_clear_error(
    output: object, config: object, message: str
) -> None:
    when = given(start(fan(config))).when(complete("a", output))
    failed = [e for e in when.events if isinstance(e, StepFailed)]
    assert len(failed) == 1 and failed[0].step_id == "m" and not failed[0].will_retry
    assert message in failed[0].error.message, failed[0].error.message


@pytest.mark.parametrize(
    ("step", "path", "rule"),
    [
        ({"config": {"mode": "all"}}, "steps[1].config.mode", "fail_fast, collect"),
        ({"config": {"max_concurrency": 0}}, "steps[1].config.max_concurrency", "from 1 to"),
        ({"config": {"max_items": 10**9}}, "steps[1].config.max_items", "from 1 to"),
        ({"config": {"items": "x"}}, "steps[1].config.items", "unknown field"),
        ({"config": {"items_path": "a..b"}}, "steps[1].config.items_path", "dotted path"),
        ({"depends_on": []}, "steps[1].depends_on", "exactly one dependency"),
        ({"task": None}, "steps[1].task", "is required"),
    ],
)
def test_bad_map_definitions_are_named_by_path(
    step: dict[str, object], path: str, rule: str
) -> None:
    good: dict[str, object] = {"id": "m", "type": "map", "task": "work", "depends_on": ["a"]}
    document = {"name": "w", "steps": [{"id": "a", "task": "a"}, {**good, **step}]}
    with pytest.raises(WorkflowInvalidError) as caught:
        parse_workflow(document)
    assert any(p.path == path and rule in p.rule for p in caught.value.problems), (
        caught.value.problems
    )
    ok = {"name": "w", "steps": [{"id": "a", "task": "a"}, good]}
    assert parse_workflow(ok).steps[1].type == "map"


def test_resume_issues_again_every_scheduled_items_task_and_retry_timer() -> None:
    wf = fan({"max_concurrency": 3}, retry_policy=retry(2))
    state = given(start(wf), complete("a", [1, 2, 3, 4]), complete("m.0", 1), fail("m.2")).state
    effects = resume(state)
    tasks = sorted((e.step_id, e.attempt) for e in effects if isinstance(e, EnqueueTask))
    timers = [e.timer_id for e in effects if isinstance(e, ArmTimer)]
    assert tasks == [("m.1", 1), ("m.3", 1)]
    assert timers == [retry_timer_id("m.2", 2)]


def test_a_cancel_cancels_the_item_timers_still_armed() -> None:
    from tests.kernel_dsl import cancel

    wf = fan({"max_concurrency": 2}, retry_policy=retry(2), timeout_ms=60_000)
    when = given(start(wf), complete("a", [1, 2]), fail("m.0")).when(cancel("stop"))
    cancelled = {e.timer_id for e in when.effects if isinstance(e, CancelTimer)}
    assert {retry_timer_id("m.0", 2), step_timeout_timer_id("m.1", 1)} <= cancelled


def test_results_for_unknown_items_are_ignored_and_unknown_steps_still_rejected() -> None:
    running = given(start(fan({})), complete("a", [1]))
    running.when(complete("m.7", 1)).then_nothing()
    running.when(complete("m.x", 1)).then_nothing()
    running.when(complete("m.00", 1)).then_nothing()
    running.when(complete("zz.0", 1)).then_rejected("unknown_step")
    running.when(complete("m.0", 1, attempt=2)).then_nothing()


def _drive(wf: WorkflowDef, items: int, *, seed: int) -> tuple[RunState, int]:
    """Complete every item in a random order; return the final state and the most in flight."""
    rng = random.Random(seed)
    state = given(start(wf), complete("a", list(range(items)))).state
    most = 0
    at = 10_000
    while state.status == "running":
        map_state = state.dynamic.maps[0]
        live = [
            index
            for index in range(map_state.count)
            if map_state.item(index).status in ("scheduled", "retry_wait")
        ]
        most = max(most, map_state.active)
        assert live, "a running map has live items"
        index = rng.choice(live)
        item = map_state.item(index)
        at += 1
        command: AnyCommand = complete(f"m.{index}", index * 2, attempt=item.attempt, at_ms=at)
        if item.status == "retry_wait":
            command = msgspec.structs.replace(
                fire_item_retry(f"m.{index}", item.attempt + 1), at_ms=at
            )
        elif rng.random() < 0.2:
            command = fail(f"m.{index}", "flaky", attempt=item.attempt, at_ms=at)
        events = decide(state, command)
        assert isinstance(events, tuple)
        for event in events:
            state = evolve(state, event)
            react(state, event)
        b = state.step("b")
        if b is not None and b.status == "scheduled":
            break
    return state, most


@pytest.mark.parametrize("seed", range(5))
def test_the_concurrency_bound_is_never_exceeded_and_outputs_keep_input_order(seed: int) -> None:
    wf = fan({"max_concurrency": 3, "mode": "collect"}, retry_policy=retry(2, initial_delay_ms=0))
    state, most = _drive(wf, 20, seed=seed)
    assert most == 3
    m = state.step("m")
    assert m is not None and m.status == "completed"
    values = msgspec.json.decode(bytes(m.output))
    assert len(values) == 20
    assert all(v == i * 2 or isinstance(v, dict) for i, v in enumerate(values))


def _calls_per_item(items: int) -> float:
    """Function calls (Python and built-in, as cProfile counts them) per item to decide, fold
    and react a map of `items` items from its expansion to its end."""
    wf = fan({"max_concurrency": 500})
    state = given(start(wf), complete("a", list(range(items)))).state
    profile = cProfile.Profile()
    profile.enable()
    for index in range(items):
        events = decide(state, complete(f"m.{index}", index, at_ms=10_000 + index))
        assert isinstance(events, tuple) and events
        for event in events:
            state = evolve(state, event)
            react(state, event)
    profile.disable()
    m = state.step("m")
    assert m is not None and m.status == "completed"
    assert msgspec.json.decode(bytes(m.output)) == list(range(items))
    calls = sum(entry.callcount for entry in profile.getstats())
    return calls / items


def test_ten_thousand_items_cost_little_per_event() -> None:
    """An item's decision and fold does a bounded amount of work, whatever the map's size: a
    scan of every item per event would multiply the calls per item by ten from 1k to 10k."""
    small, large = _calls_per_item(1_000), _calls_per_item(10_000)
    assert large <= 1.5 * small, f"{small:.0f} calls per item at 1k, {large:.0f} at 10k"
    # (each item event folded once by the decision: test_a_decision_folds_each_item_event_once)


def _folds_in(profile: cProfile.Profile) -> int:
    """Calls of the reducer's `evolve` that `profile` saw."""
    return sum(
        entry.callcount
        for entry in profile.getstats()
        if not isinstance(entry.code, str)
        and entry.code.co_name == "evolve"
        and entry.code.co_filename.endswith("reducer.py")
    )


def test_a_decision_folds_each_item_event_once() -> None:
    """The map's draft folds its own events; the decision takes the draft's states rather
    than folding each event a second time (and the caller's fold gives the same state)."""
    wf = fan({"max_concurrency": 4})
    state = given(start(wf), complete("a", list(range(10)))).state
    profile = cProfile.Profile()
    profile.enable()
    events = decide(state, complete("m.0", 0, at_ms=10_000))
    profile.disable()
    assert isinstance(events, tuple)
    assert [type(e).__name__ for e in events] == ["MapItemCompleted", "MapItemScheduled"]
    assert _folds_in(profile) == len(events)
    for event in events:
        state = evolve(state, event)
    m = map_of(state, "m")
    assert m is not None and (m.completed, m.active, m.next_index) == (1, 4, 5)
