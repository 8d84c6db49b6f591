"""A small fluent Python builder for workflow definitions.

```python
wf = (
    Workflow("order", version="2", timeout="1h", max_concurrent_steps=4)
    .task("fetch", task="http.fetch", retry=Retry(max_attempts=3, initial_delay="1s"))
    .task("charge", task="payments.charge", depends_on=["fetch"], compensate="refund")
    .task("refund", task="payments.refund")
    .build()
)
```

The builder writes the user's JSON document and `build()` parses it with `parse_workflow`, so
it yields the same `WorkflowDef` as the equivalent JSON file and fails with the same
`WorkflowInvalidError` (same paths, same rules). Durations are Go-style strings ("30s") or
integers of MILLISECONDS (unlike the JSON form, where an integer means nanoseconds). Every
method returns a new builder; none changes the one it is called on. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import msgspec

from kernel.workflow.durations import format_duration
from kernel.workflow.model import SkipOp, WorkflowDef
from kernel.workflow.parse import parse_workflow

Duration = str | int  # "1m30s", or an integer of milliseconds


class Retry(msgspec.Struct, frozen=True, kw_only=True):
    """A retry policy as the builder takes it (durations as in `Duration`)."""

    max_attempts: int = 1
    strategy: str = "exponential"
    initial_delay: Duration = "1s"
    max_delay: Duration = 0
    multiplier: float = 2.0
    jitter: float | bool = 0.0


class Skip(msgspec.Struct, frozen=True, kw_only=True):
    """Skip the step when `field` of dependency `step_id`'s output compares true to `value`."""

    step_id: str
    field: str
    op: SkipOp
    value: object


class _Step(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    type: str
    task: str
    depends_on: tuple[str, ...] | str
    retry: Retry | None
    timeout: Duration | None
    skip_if: Skip | None
    on_failure: str | None
    compensate: str | None
    metadata: Mapping[str, str] | None
    config: Mapping[str, object] | None


class Workflow:
    """An immutable workflow under construction; `build()` returns the `WorkflowDef`."""

    __slots__ = ("_header", "_steps")

    def __init__(
        self,
        name: str,
        *,
        version: str | int = "1",
        timeout: Duration | None = None,
        max_concurrent_steps: int | None = None,
        default_retry: Retry | None = None,
        metadata: Mapping[str, str] | None = None,
        cancel_on: Mapping[str, object] | Sequence[Mapping[str, object]] | None = None,
    ) -> None:
        header: dict[str, object] = {"name": name, "version": version}
        if timeout is not None:
            header["timeout"] = _duration(timeout)
        if max_concurrent_steps is not None:
            header["concurrency"] = {"max_steps": max_concurrent_steps}
        if default_retry is not None:
            header["default_retry"] = _retry(default_retry)
        if metadata is not None:
            header["metadata"] = dict(metadata)
        if isinstance(cancel_on, Mapping):
            header["cancel_on"] = dict(cancel_on)  # {"event": name, "match": {...}}
        elif cancel_on is not None:
            header["cancel_on"] = [dict(item) for item in cancel_on]
        self._header: tuple[tuple[str, object], ...] = tuple(header.items())
        self._steps: tuple[_Step, ...] = ()

    def step(
        self,
        step_id: str,
        *,
        type: str = "task",
        task: str = "",
        depends_on: Sequence[str] = (),
        retry: Retry | None = None,
        timeout: Duration | None = None,
        skip_if: Skip | None = None,
        on_failure: str | None = None,
        compensate: str | None = None,
        metadata: Mapping[str, str] | None = None,
        config: Mapping[str, object] | None = None,
    ) -> Workflow:
        """A new builder with one more step of any type, after the steps so far."""
        step = _Step(
            id=step_id,
            type=type,
            task=task,
            # a lone string is not a list of ids: pass it on for the parser to name
            depends_on=depends_on if isinstance(depends_on, str) else tuple(depends_on),
            retry=retry,
            timeout=timeout,
            skip_if=skip_if,
            on_failure=on_failure,
            compensate=compensate,
            metadata=dict(metadata) if metadata is not None else None,  # copies: the caller
            config=dict(config) if config is not None else None,  # may change theirs later
        )
        following = Workflow.__new__(Workflow)
        following._header = self._header
        following._steps = (*self._steps, step)
        return following

    def task(
        self,
        step_id: str,
        *,
        task: str,
        depends_on: Sequence[str] = (),
        retry: Retry | None = None,
        timeout: Duration | None = None,
        skip_if: Skip | None = None,
        on_failure: str | None = None,
        compensate: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> Workflow:
        """A new builder with one more `task` step, run by the worker handler for `task`."""
        return self.step(
            step_id,
            type="task",
            task=task,
            depends_on=depends_on,
            retry=retry,
            timeout=timeout,
            skip_if=skip_if,
            on_failure=on_failure,
            compensate=compensate,
            metadata=metadata,
        )

    def to_document(self) -> dict[str, object]:
        """The workflow as the user JSON document (a fresh dict each call)."""
        document = dict(self._header)
        document["steps"] = [_step_document(step) for step in self._steps]
        return document

    def build(self) -> WorkflowDef:
        """The validated definition.

        Raises:
            WorkflowInvalidError: exactly as `parse_workflow` of `to_document()` would.
        """
        return parse_workflow(self.to_document())


def _step_document(step: _Step) -> dict[str, object]:
    document: dict[str, object] = {"id": step.id, "type": step.type}
    if step.task:
        document["task"] = step.task
    if step.depends_on:
        document["depends_on"] = (
            step.depends_on if isinstance(step.depends_on, str) else list(step.depends_on)
        )
    if step.retry is not None:
        document["retry"] = _retry(step.retry)
    if step.timeout is not None:
        document["timeout"] = _duration(step.timeout)
    if step.skip_if is not None:
        skip = step.skip_if
        document["skip_if"] = {
            "step_id": skip.step_id,
            "field": skip.field,
            "op": skip.op,
            "value": skip.value,
        }
    if step.on_failure is not None:
        document["on_failure"] = step.on_failure
    if step.compensate is not None:
        document["compensate"] = step.compensate
    if step.metadata is not None:
        document["metadata"] = dict(step.metadata)
    if step.config is not None:
        document["config"] = dict(step.config)
    return document


def _retry(retry: Retry) -> dict[str, object]:
    return {
        "max_attempts": retry.max_attempts,
        "strategy": retry.strategy,
        "initial_delay": _duration(retry.initial_delay),
        "max_delay": _duration(retry.max_delay),
        "multiplier": retry.multiplier,
        "jitter": retry.jitter,
    }


def _duration(value: Duration) -> object:
    """Milliseconds as a duration string; anything else as given, for the parser to judge."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return format_duration(value)
    return value
