"""The `map` step type: one worker task per item of an array from its one dependency, then join.

Config: `items_path` (a dotted path into the dependency's output; empty: the output itself),
`max_items` (more fails the step), `max_concurrency` (items in flight at once), `mode`
(`fail_fast`: the first item failing for good fails the step; `collect`: a failed item's
output is `{"error": {"message": ..., "kind": ...}}`). The step's `task` runs each item; its
`retry` and `timeout` apply to each item's attempts. The output is the items' outputs in input
order.

Items are not steps: they live in the map's compact `MapState` (kernel.step_states), so an
item's event costs O(chunk), not O(items). An item's task message, results and timers use the
id `<map>.<index>`; the kernel routes them here (`item`).

decide: start reads the items (`map.expanded`) and schedules the first `max_concurrency`
(`map.item.scheduled`); items that end (`map.item.completed`/`map.item.failed`) let the next
ones start, in batches once enough slots are free (one publish per batch, not per item); the
last one completes the step.
evolve: the item events update the map's state.
react: a scheduled item is a task message (and its timeout timer); a failed one may arm a retry.
resume: every scheduled item's message and every armed item timer again.
"""

from __future__ import annotations

from typing import Final

import msgspec

from kernel import limits, registry
from kernel.commands import AnyCommand, CompleteTask, FailTask, FireTimer, Rejection
from kernel.effects import AnyEffect, CancelTimer, EnqueueTask, task_msg_id
from kernel.events import (
    AnyEvent,
    ErrorInfo,
    MapExpanded,
    MapItemCompleted,
    MapItemFailed,
    MapItemLost,
    MapItemScheduled,
    RunCancelled,
    RunCompleted,
    RunFailed,
    StepEvent,
    StepScheduled,
)
from kernel.outcome import LOST_KINDS, RETRYABLE_KINDS, ItemReport, StartAttempt, StepInput
from kernel.retry import backoff_ms, failures, lost_error, lost_exhausted, may_retry
from kernel.state import RunState
from kernel.step_states import MapItem, MapState, new_map
from kernel.timers import arm_timer, retry_timer_id, step_timeout_timer_id
from kernel.workflow import NO_RETRY, RetryPolicy
from steps.base import ConfiguredStepType, Draft, config_of
from steps.map_config import CONFIG_FIELDS, MapConfig, read_config, read_items

EMPTY_LIST: Final = msgspec.Raw(b"[]")
REFILL_BATCH_MAX: Final = 64
replace = msgspec.structs.replace


class MapStep(ConfiguredStepType[MapConfig]):
    """Fan one task out over a list, bounded, and join the outputs in order."""

    config_type = MapConfig
    config_fields = CONFIG_FIELDS
    read = staticmethod(read_config)
    name = "map"
    needs_task = True

    # decide
    def on(self, draft: Draft, step_id: str, given: StepInput) -> Rejection | None:
        match given:
            case StartAttempt():
                _start(draft, step_id, given)
            case ItemReport():
                _item(draft, step_id, given.key, given.command)
        return None  # (no worker runs the map step itself, only its items)

    # evolve
    def evolve(self, state: RunState, event: StepEvent) -> RunState:
        if isinstance(event, MapExpanded):
            step = state.step(event.step_id)
            assert step is not None
            items = read_items(step.input, _config(state, event.step_id).items_path)
            assert isinstance(items, tuple) and len(items) == event.count, "expanded as decided"
            return with_map(state, new_map(event.step_id, event.attempt, items))
        map_state = map_of(state, event.step_id)
        assert map_state is not None, f"map {event.step_id!r} was not expanded"
        match event:
            case MapItemScheduled():
                return with_map(state, _scheduled(map_state, event))
            case MapItemCompleted():
                lost = map_state.item(event.index).lost_attempts
                item = MapItem(
                    status="completed",
                    attempt=event.attempt,
                    output=event.output,
                    lost_attempts=lost,
                )
                ended = replace(
                    map_state, active=map_state.active - 1, completed=map_state.completed + 1
                )
                return with_map(state, ended.with_item(event.index, item))
            case MapItemFailed():
                return with_map(state, _failed(map_state, event))
            case MapItemLost():
                return with_map(state, _lost(map_state, event))
        raise AssertionError(f"map owns no event {type(event).__name__}")

    # react
    def react(self, state: RunState, event: AnyEvent) -> tuple[AnyEffect, ...]:
        match event:
            case MapItemScheduled():
                return _item_effects(state, event.step_id, event.index)
            case MapItemCompleted() | MapItemFailed() | MapItemLost():
                effects: list[AnyEffect] = []
                item_id = f"{event.step_id}.{event.index}"
                step_def = state.step_def(event.step_id)
                assert step_def is not None
                if step_def.timeout_ms is not None:
                    timer_id = step_timeout_timer_id(item_id, event.attempt)
                    effects.append(CancelTimer(run_id=state.run_id, timer_id=timer_id))
                if isinstance(event, MapItemFailed) and event.will_retry:
                    effects.extend(_item_effects(state, event.step_id, event.index))
                return tuple(effects)
            case RunCompleted() | RunFailed() | RunCancelled():
                return _cancel_item_timers(state, _all_maps(state))
        return ()

    # resume
    def resume(self, state: RunState, step_id: str) -> tuple[AnyEffect, ...]:
        map_state = map_of(state, step_id)
        if map_state is None:
            return ()
        effects: list[AnyEffect] = []
        for index in range(map_state.count):
            if map_state.item(index).status in ("scheduled", "retry_wait"):
                effects.extend(_item_effects(state, step_id, index))
        return tuple(effects)


def _config(state: RunState, step_id: str) -> MapConfig:
    return config_of(state, step_id, MapConfig)


def _start(context: Draft, step_id: str, given: StartAttempt) -> None:
    config = _config(context.state, step_id)
    attempt = given.attempt
    context.emit(
        StepScheduled(step_id=step_id, attempt=attempt, input=given.input, at_ms=context.at_ms)
    )
    items = read_items(given.input, config.items_path)
    if isinstance(items, str):
        context.fail(step_id, ErrorInfo(message=items, kind="non_retryable"), retryable=False)
        return
    if len(items) > config.max_items:
        message = f"the input holds {len(items)} items; max_items is {config.max_items}"
        context.fail(step_id, ErrorInfo(message=message, kind="non_retryable"), retryable=False)
        return
    context.emit(
        MapExpanded(step_id=step_id, attempt=attempt, count=len(items), at_ms=context.at_ms)
    )
    _next(context, step_id, config)


def _item(context: Draft, step_id: str, key: str, command: AnyCommand) -> None:
    state = context.state
    step = state.step(step_id)
    map_state = map_of(state, step_id)
    if state.status != "running" or step is None or map_state is None:
        return
    if step.status not in ("scheduled", "running") or map_state.attempt != step.attempt:
        return
    index = int(key) if key.isdigit() and str(int(key)) == key else -1
    if not 0 <= index < map_state.count:
        return
    item = map_state.item(index)
    live = item.status == "scheduled"
    match command:
        case CompleteTask() if live and item.attempt == command.attempt:
            _item_completed(context, step_id, index, command)
        case FailTask() if live and item.attempt == command.attempt:
            if command.kind in LOST_KINDS:
                _item_lost(context, step_id, index, command.error[:1024])
                return
            error = ErrorInfo(message=command.error[:1024], kind=command.kind)
            retryable = command.kind in RETRYABLE_KINDS
            _item_failed(context, step_id, index, error, retryable, command.retry_after_ms)
        case FireTimer(kind="retry") if item.status == "retry_wait":
            if command.attempt == item.attempt + 1:
                _schedule(context, step_id, index, command.attempt)
        case FireTimer(kind="step_timeout") if live and item.attempt == command.attempt:
            error = ErrorInfo(message=f"attempt {item.attempt} timed out", kind="timeout")
            _item_failed(context, step_id, index, error, True, None)
        case _:
            return  # a start report, a stale result or timer: nothing to decide


def map_of(state: RunState, step_id: str) -> MapState | None:
    """The items of map step `step_id`, once expanded."""
    for map_state in state.dynamic.maps:
        if map_state.step_id == step_id:
            return map_state
    return None


def with_map(state: RunState, map_state: MapState) -> RunState:
    """`state` with the map of `map_state.step_id` replaced (or added) and the map's event
    counted, in one replace of the run (kernel.registry: a step type's evolve counts)."""
    maps = state.dynamic.maps
    for index, existing in enumerate(maps):
        if existing.step_id == map_state.step_id:
            maps = (*maps[:index], map_state, *maps[index + 1 :])
            break
    else:
        maps = (*maps, map_state)
    dynamic = replace(state.dynamic, maps=maps)
    return replace(state, dynamic=dynamic, event_count=state.event_count + 1)


def _policy(state: RunState, step_id: str) -> RetryPolicy:
    step_def = state.step_def(step_id)
    assert step_def is not None and state.workflow is not None
    return step_def.retry or state.workflow.default_retry or NO_RETRY


def _schedule(context: Draft, step_id: str, index: int, attempt: int) -> None:
    step_def = context.state.step_def(step_id)
    assert step_def is not None
    timeout = step_def.timeout_ms
    deadline = context.at_ms + timeout if timeout is not None else None
    context.emit(
        MapItemScheduled(
            step_id=step_id, index=index, attempt=attempt, at_ms=context.at_ms, deadline_ms=deadline
        )
    )


def _next(context: Draft, step_id: str, config: MapConfig) -> None:
    """Start pending items while there is room; complete the step when every item ended."""
    map_state = map_of(context.state, step_id)
    assert map_state is not None
    room = min(config.max_concurrency - map_state.active, map_state.count - map_state.next_index)
    if map_state.active and room < _refill_batch(config):
        room = 0 if map_state.next_index + room < map_state.count else room
    for index in range(map_state.next_index, map_state.next_index + max(0, room)):
        _schedule(context, step_id, index, 1)
    map_state = map_of(context.state, step_id)
    assert map_state is not None and map_state.active <= config.max_concurrency
    if map_state.done == map_state.count:
        context.complete(step_id, _output(map_state))


def _refill_batch(config: MapConfig) -> int:
    """How many free slots a busy map waits for before it starts more items: one task message
    per item ending would cost a publish in every decision; a batch costs one in many."""
    return max(1, min(REFILL_BATCH_MAX, config.max_concurrency // 4))


def _item_completed(context: Draft, step_id: str, index: int, command: CompleteTask) -> None:
    if len(command.output) > limits.payload_bytes_max:
        size = len(command.output)
        message = f"output is {size} bytes; the limit is {limits.payload_bytes_max} bytes"
        error = ErrorInfo(message=message, kind="invalid_output")
        _item_failed(context, step_id, index, error, False, None)
        return
    attempt = command.attempt
    context.emit(
        MapItemCompleted(
            step_id=step_id,
            index=index,
            attempt=attempt,
            output=command.output,
            at_ms=context.at_ms,
        )
    )
    _next(context, step_id, _config(context.state, step_id))


def _item_failed(
    context: Draft,
    step_id: str,
    index: int,
    error: ErrorInfo,
    retryable: bool,
    retry_after_ms: int | None,
) -> None:
    map_state = map_of(context.state, step_id)
    assert map_state is not None
    item = map_state.item(index)
    attempt = item.attempt
    policy = _policy(context.state, step_id)
    will_retry = retryable and may_retry(policy, attempt, item.lost_attempts)
    due: int | None = None
    if will_retry:
        failed = failures(attempt, item.lost_attempts)
        delay = (
            retry_after_ms
            if retry_after_ms is not None
            else backoff_ms(policy, failed, context.seed)
        )
        due = context.at_ms + max(0, min(delay, limits.delay_ms_max))
    context.emit(
        MapItemFailed(
            step_id=step_id,
            index=index,
            attempt=attempt,
            error=error,
            will_retry=will_retry,
            at_ms=context.at_ms,
            due_at_ms=due,
        )
    )
    if will_retry:
        return
    config = _config(context.state, step_id)
    if config.mode == "fail_fast":
        message = f"item {index} failed: {error.message}"
        context.fail(step_id, ErrorInfo(message=message, kind=error.kind), retryable=False)
        return
    _next(context, step_id, config)


def _item_lost(context: Draft, step_id: str, index: int, message: str) -> None:
    """An item's attempt was lost (its worker vanished): the next one runs at once, without
    consuming the retry policy, up to limits.lost_attempts_max lost attempts."""
    map_state = map_of(context.state, step_id)
    assert map_state is not None
    item = map_state.item(index)
    if lost_exhausted(item.lost_attempts):
        error = lost_error(f"map item {step_id}.{index}", item.attempt, message)
        _item_failed(context, step_id, index, error, False, None)
        return
    error = ErrorInfo(message=message, kind="lost")
    context.emit(
        MapItemLost(
            step_id=step_id, index=index, attempt=item.attempt, error=error, at_ms=context.at_ms
        )
    )
    _schedule(context, step_id, index, item.attempt + 1)


def _scheduled(map_state: MapState, event: MapItemScheduled) -> MapState:
    item = map_state.item(event.index)
    assert event.attempt > item.attempt, f"item {event.index}: attempts only grow"
    assert event.attempt <= limits.attempt_number_max, f"item {event.index}: {event.attempt}"
    first = item.status == "pending"
    assert first == (event.index == map_state.next_index), "items start in input order"
    scheduled = MapItem(
        status="scheduled",
        attempt=event.attempt,
        deadline_ms=event.deadline_ms,
        lost_attempts=item.lost_attempts,
    )
    grown = replace(
        map_state,
        next_index=map_state.next_index + (1 if first else 0),
        active=map_state.active + (1 if first else 0),
    )
    return grown.with_item(event.index, scheduled)


def _failed(map_state: MapState, event: MapItemFailed) -> MapState:
    item = map_state.item(event.index)
    assert item.status == "scheduled", f"item {event.index} failed while {item.status}"
    if event.will_retry:
        waiting = replace(
            item, status="retry_wait", error=event.error, deadline_ms=None,
            retry_at_ms=event.due_at_ms,
        )  # fmt: skip
        return map_state.with_item(event.index, waiting)
    failed = replace(item, status="failed", error=event.error, deadline_ms=None)
    ended = replace(map_state, active=map_state.active - 1, failed=map_state.failed + 1)
    return ended.with_item(event.index, failed)


def _lost(map_state: MapState, event: MapItemLost) -> MapState:
    item = map_state.item(event.index)
    assert item.status == "scheduled", f"item {event.index} lost while {item.status}"
    assert item.lost_attempts < limits.lost_attempts_max, f"item {event.index}: lost too often"
    waiting = replace(
        item, status="retry_wait", error=event.error, deadline_ms=None,
        retry_at_ms=event.at_ms, lost_attempts=item.lost_attempts + 1,
    )  # fmt: skip
    return map_state.with_item(event.index, waiting)


def _output(map_state: MapState) -> msgspec.Raw:
    """The items' outputs in input order; a failed item (collect mode) as its error."""
    parts: list[bytes] = []
    for chunk in map_state.chunks:
        for item in chunk:
            if item.status == "completed":
                parts.append(bytes(item.output))
            else:
                assert item.status == "failed" and item.error is not None, item.status
                error = {"message": item.error.message, "kind": item.error.kind}
                parts.append(msgspec.json.encode({"error": error}))
    return msgspec.Raw(b"[" + b",".join(parts) + b"]")


def _item_effects(state: RunState, step_id: str, index: int) -> tuple[AnyEffect, ...]:
    """What an item needs while it is scheduled (its task message, its timeout) or waits to
    retry (its retry timer)."""
    step_def = state.step_def(step_id)
    map_state = map_of(state, step_id)
    assert step_def is not None and map_state is not None
    item = map_state.item(index)
    item_id = f"{step_id}.{index}"
    if item.status == "retry_wait":
        assert item.retry_at_ms is not None
        attempt = item.attempt + 1
        timer_id = retry_timer_id(item_id, attempt)
        return (
            arm_timer(state, timer_id, "retry", item.retry_at_ms, step_id=item_id, attempt=attempt),
        )
    assert item.status == "scheduled", item.status
    task = EnqueueTask(
        run_id=state.run_id,
        step_id=item_id,
        attempt=item.attempt,
        task=step_def.task,
        input=map_state.items[index],
        metadata=step_def.metadata,
        msg_id=task_msg_id(state.run_id, item_id, item.attempt, state.seed),
        deadline_ms=item.deadline_ms,
    )
    if item.deadline_ms is None:
        return (task,)
    timer_id = step_timeout_timer_id(item_id, item.attempt)
    timeout = arm_timer(
        state, timer_id, "step_timeout", item.deadline_ms, step_id=item_id, attempt=item.attempt
    )
    return (task, timeout)


def _all_maps(state: RunState) -> tuple[str, ...]:
    return tuple(m.step_id for m in state.dynamic.maps)


def _cancel_item_timers(state: RunState, step_ids: tuple[str, ...]) -> tuple[AnyEffect, ...]:
    """On the run's end: cancel the timers of items still scheduled or waiting to retry."""
    effects: list[AnyEffect] = []
    for step_id in step_ids:
        map_state = map_of(state, step_id)
        assert map_state is not None
        for index in range(map_state.count):
            item = map_state.item(index)
            item_id = f"{step_id}.{index}"
            if item.status == "retry_wait":
                timer_id = retry_timer_id(item_id, item.attempt + 1)
            elif item.status == "scheduled" and item.deadline_ms is not None:
                timer_id = step_timeout_timer_id(item_id, item.attempt)
            else:
                continue
            effects.append(CancelTimer(run_id=state.run_id, timer_id=timer_id))
    return tuple(effects)


MAP = registry.register(MapStep())
