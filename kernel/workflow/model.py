"""The workflow types: the typed, normalized definition every run carries in `run.started`.

Users write JSON in the field names of the DagNats workflow files (`depends_on`,
`retry.max_attempts`, durations as `"30s"` or integer nanoseconds) or use the Python builder;
both produce the same `WorkflowDef`. This module holds only the types and their constants: it
reads, checks and writes nothing (that is `parse`, `rules` and `document`); of the project it
imports only `kernel.registry` (whose step types turn a step's config into its typed settings,
and which imports this module for type hints alone). Pure: no I/O.

The stored form accepts unknown fields (an old reader skips what a newer writer added); the
user-written form rejects them, which the parser enforces by hand.
"""

from __future__ import annotations

from functools import cached_property
from typing import Final, Literal

import msgspec

from kernel import registry
from kernel.workflow.child_runs import ChildRuns
from kernel.workflow.trigger_model import TriggerDef

RetryStrategy = Literal["fixed", "linear", "exponential"]
SkipOp = Literal["==", "!=", "<", ">", "<=", ">="]
EMPTY_OBJECT: Final = msgspec.Raw(b"{}")
NO_MATCH: Final = msgspec.Raw(b"null")  # a cancel_on without `match`: any payload


class RetryPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """How often and how late a failed attempt is tried again.

    `max_attempts` counts every attempt, the first included (1 = no retry). Delays grow by
    `strategy` from `initial_delay_ms`, capped at `max_delay_ms` (0 = only the global cap), and
    are spread by `jitter`, a fraction in [0, 1] of the delay.
    """

    max_attempts: int = 1
    strategy: RetryStrategy = "exponential"
    initial_delay_ms: int = 1_000
    max_delay_ms: int = 0
    multiplier: float = 2.0
    jitter: float = 0.0


NO_RETRY: Final = RetryPolicy()


class SkipIf(msgspec.Struct, frozen=True, kw_only=True):
    """Skip a step when a dependency's output field compares true against `value` (JSON)."""

    step_id: str
    field: str
    op: SkipOp
    value: msgspec.Raw


class StepDef(msgspec.Struct, frozen=True, kw_only=True, dict=True):
    """One node of the DAG. `config` is the step type's own config, as JSON on the wire;
    `settings` is that config typed (the step type's frozen Struct), converted once per
    definition value and carried with it (not stored: the bytes stay `config`)."""

    id: str
    type: str = "task"
    task: str = ""
    depends_on: tuple[str, ...] = ()
    retry: RetryPolicy | None = None
    timeout_ms: int | None = None
    skip_if: SkipIf | None = None
    on_failure: str | None = None
    compensate: str | None = None
    metadata: msgspec.Raw = EMPTY_OBJECT
    config: msgspec.Raw = EMPTY_OBJECT
    # The worker group its tasks go to (README "Worker groups"); left out of the encoded form
    # when there is none (runs' histories stay as they were).
    group: str | msgspec.UnsetType = msgspec.UNSET

    @property
    def worker_group(self) -> str:
        """The step's worker group, "" when it has none."""
        return self.group if isinstance(self.group, str) else ""

    @cached_property
    def settings(self) -> object:
        """The step type's typed config of this step (None for a type without config).

        Raises:
            KeyError: the type is not registered (definitions are validated before use).
        """
        return registry.get(self.type).read_config(self)


class CancelOn(msgspec.Struct, frozen=True, kw_only=True):
    """Cancel the run when an external event named `event` arrives whose payload meets `match`
    (a `kernel.conditions` condition, as JSON; `null`: any payload)."""

    event: str
    match: msgspec.Raw = NO_MATCH


SingletonMode = Literal["skip", "cancel_previous", "queue"]
SINGLETON_MODES: Final[tuple[SingletonMode, ...]] = ("skip", "cancel_previous", "queue")


class Singleton(msgspec.Struct, frozen=True, kw_only=True):
    """At most one running run per value of `key` (a dotted path into the input); `mode` says
    what a new run does while one holds the key (kernel/admission.py)."""

    key: str
    mode: SingletonMode = "skip"


class RateLimit(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A token bucket over the tasks of type `task` (or of the step `step`): `limit` units,
    refilled over `period_ms`, per value of the input path `key`; each task takes `units`."""

    task: str = ""
    step: str = ""
    limit: int
    period_ms: int
    key: str = ""
    units: int = 1


class TaskConcurrency(msgspec.Struct, frozen=True, kw_only=True):
    """At most `limit` tasks of type `task` running at once, across all runs."""

    task: str
    limit: int


class Admission(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Who may start and when (README "Admission and flow control"): at most `max_runs`
    running runs (per value of the input path `key`), the pending queue ordered by `priority`
    (or the integer at the input path `priority_key`), FIFO within a priority; a `singleton`
    key; an `input_schema` (JSON Schema, draft 2020-12, as JSON) every start's input meets."""

    max_runs: int | None = None
    key: str = ""
    priority: int = 0
    priority_key: str = ""
    singleton: Singleton | None = None
    # JSON `null` when none: msgspec decodes no `Raw | None` union (a stored workflow with a
    # schema failed to decode); `schema` is the optional view.
    input_schema: msgspec.Raw = msgspec.Raw(b"null")
    rate_limits: tuple[RateLimit, ...] = ()  # flow control of its tasks (kernel/admission_flow)
    max_task_concurrency: tuple[TaskConcurrency, ...] = ()

    @property
    def schema(self) -> msgspec.Raw | None:
        """The input_schema (None: the workflow has none)."""
        return None if bytes(self.input_schema) == b"null" else self.input_schema

    @property
    def limits_tasks(self) -> bool:
        """Whether its tasks wait for a rate limit or a task concurrency limit."""
        return bool(self.rate_limits or self.max_task_concurrency)

    @property
    def gated(self) -> bool:
        """Whether starts wait for a slot (a concurrency limit or a singleton key)."""
        return self.max_runs is not None or self.singleton is not None


class WorkflowDef(msgspec.Struct, frozen=True, kw_only=True):
    """A whole workflow: named, versioned, its steps in the order the user wrote them."""

    name: str
    version: str = "1"
    steps: tuple[StepDef, ...] = ()
    default_retry: RetryPolicy | None = None
    timeout_ms: int | None = None
    max_concurrent_steps: int | None = None
    metadata: msgspec.Raw = EMPTY_OBJECT
    cancel_on: tuple[CancelOn, ...] = ()
    admission: Admission | None = None  # (kernel/workflow/admission.py reads it)
    # left out of the encoded form when there are none (runs' histories stay as they were)
    triggers: tuple[TriggerDef, ...] | msgspec.UnsetType = msgspec.UNSET
    # may its agents start child runs (kernel/control.py); unset: no (and not encoded)
    child_runs: ChildRuns | msgspec.UnsetType = msgspec.UNSET
