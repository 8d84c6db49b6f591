"""Effects: what the shell must do after events are appended. Data only, never stored.

The shell executes them with an exhaustive `match` ending in `assert_never`. Every effect is
idempotent: task messages carry the message id `<run>:<step>:<attempt>~<life>`, timers a stable
id. `<life>` tells apart two runs under one id (a run deleted, its id started again within the
tasks' duplicate window): the run's seed, which each start draws anew.
"""

from __future__ import annotations

from typing import Final

import msgspec

from kernel import limits
from kernel.commands import ChildStatus, ControlCommand, FireTimer
from kernel.workflow import WorkflowDef


class Effect(msgspec.Struct, frozen=True, kw_only=True):
    """Base of every effect."""

    run_id: str


class EnqueueTask(Effect, frozen=True, kw_only=True):
    """Publish a task message for a worker (deduplicated on `msg_id`)."""

    step_id: str
    attempt: int
    task: str
    input: msgspec.Raw
    metadata: msgspec.Raw
    msg_id: str
    deadline_ms: int | None = None
    # What the step type tells its handler beside the input, as a JSON object owned by the
    # step type (a planner: the problems of its last plan; an agent loop: the turn number).
    envelope: msgspec.Raw = msgspec.Raw(b"null")
    history_events: int = 0  # events in the run's history (stamped by kernel.react)
    group: str = ""  # the step's worker group, "" for any worker (stamped by kernel.react)


class ArmTimer(Effect, frozen=True, kw_only=True):
    """Arm a durable timer that delivers `command` at `fire_at_ms`."""

    timer_id: str
    fire_at_ms: int
    command: FireTimer


class CancelTimer(Effect, frozen=True, kw_only=True):
    timer_id: str


class StartChild(Effect, frozen=True, kw_only=True):
    """Start the child run of a `sub_workflow` step (or of an agent, kernel/control.py): the
    shell looks `workflow` up among the registered workflows (an agent's own `definition` is
    used as it is) and sends `StartRun` (deduplicated on the child's run id); a missing
    workflow is reported to the parent as a failed child. `at_ms` and `seed` come from
    history, so the StartRun is the same however often the effect is issued."""

    step_id: str
    child_run_id: str
    workflow: str
    input: msgspec.Raw
    depth: int
    detached: bool
    at_ms: int
    seed: int
    # The workflow an agent wrote (kernel/control.py): started as it is, never looked up.
    definition: WorkflowDef | None = None
    control_root: str = ""  # an agent's child: the root run whose quotas count it
    control_root_step: str = ""  # and the root's agent loop step


class ReportToParent(Effect, frozen=True, kw_only=True):
    """Tell the parent run (`parent_run_id`) that this child run started or ended: the shell
    sends it a `RecordChild` command (deduplicated per child and status)."""

    parent_run_id: str
    parent_step_id: str
    status: ChildStatus
    output: msgspec.Raw
    error: str
    at_ms: int
    seed: int = 0  # the reporting run's (its life tag in the message id: `life_tag`)


class CancelChild(Effect, frozen=True, kw_only=True):
    """Cancel an attached child run (its parent ended or gave up on it)."""

    child_run_id: str
    reason: str
    at_ms: int
    seed: int = 0  # the parent run's (its life tag in the message id: `life_tag`)


class WatchEvents(Effect, frozen=True, kw_only=True):
    """The run waits for external events named `names`: the shell routes each new one to it
    as a `DeliverEvent` command, and first delivers again those published since `since_ms`
    (so an event published while the engine was down, or during a race, is not lost)."""

    names: tuple[str, ...]
    since_ms: int


class PublishNotice(Effect, frozen=True, kw_only=True):
    """Publish a notice for people or other programs (a plain NATS publish on
    `dagnats.<topic>.<run>.<step>`, fire and forget, at least once after a restart): the step
    type chooses the topic (a subject token) and the JSON payload, never a run's input."""

    step_id: str
    topic: str
    payload: msgspec.Raw


class StartContinuation(Effect, frozen=True, kw_only=True):
    """Start the fresh run a run continued as (kernel.run_links): the shell looks `workflow`
    up among the registered workflows (else uses `definition`, the run's own when it continues
    as itself) and sends `StartRun`, deduplicated on the new run's id."""

    new_run_id: str
    workflow: str
    definition: WorkflowDef | None
    input: msgspec.Raw
    chain_root: str
    chain_index: int
    parent_run_id: str | None
    parent_step_id: str
    depth: int
    detached: bool
    at_ms: int
    seed: int


class SendCommand(Effect, frozen=True, kw_only=True):
    """Send `command` to another run of the same tree (the control plane's quotas per root
    run, kernel/control.py): the shell publishes it with message id `msg_id`, so an effect
    issued again (a resume) sends one command, and the receiver decides a duplicate alike."""

    command: ControlCommand
    msg_id: str


AnyEffect = (
    EnqueueTask | ArmTimer | CancelTimer | StartChild | ReportToParent | CancelChild | WatchEvents
    | PublishNotice | StartContinuation | SendCommand
)  # fmt: skip


def attempt_key(run_id: str, step_id: str, attempt: int) -> str:
    """One attempt of a step of a run: `<run>:<step>:<attempt>` (what a task token signs)."""
    assert attempt >= 1, f"attempt {attempt} must be >= 1"
    return f"{run_id}:{step_id}:{attempt}"


def life_tag(seed: int) -> str:
    """The run's life in message ids: the low 32 bits of its seed, as 8 hex digits."""
    tag = _life_tags.get(seed)  # (every task message and every result asks: formatted once)
    if tag is None:
        tag = f"{seed & 0xFFFFFFFF:08x}"
        if len(_life_tags) >= limits.life_tags_cached_max:
            _life_tags.clear()
        _life_tags[seed] = tag
    return tag


# Life tags by seed: a run's seed is fixed for its life, so each run formats its tag once. A
# pure memo (the same answer as formatting), cleared when full.
_life_tags: dict[int, str] = {}

LIFE_SEPARATOR: Final = "~"  # (never in a run or step id: a subject token's characters)


def in_life(msg_id: str, seed: int) -> str:
    """`msg_id` of the life of the run whose seed is `seed`: `<msg_id>~<life>`. Every message
    id a run's life sends under is so tagged, so a run id purged and started again within a
    duplicate window has its messages kept, not dropped as copies of the old life's."""
    return f"{msg_id}{LIFE_SEPARATOR}{life_tag(seed)}"


def task_msg_id(run_id: str, step_id: str, attempt: int, seed: int) -> str:
    """The idempotency key of one attempt of one life of a run: `<run>:<step>:<attempt>~<life>`
    (`seed`: the run's, RunState.seed): `in_life(attempt_key(...), seed)`, in one format."""
    assert attempt >= 1, f"attempt {attempt} must be >= 1"
    return f"{run_id}:{step_id}:{attempt}{LIFE_SEPARATOR}{life_tag(seed)}"


def life_of(msg_id: str) -> str | msgspec.UnsetType:
    """The life tag of a task message id (what its results carry: kernel/commands `Life`);
    unset for an id without one."""
    return msg_id.partition(LIFE_SEPARATOR)[2] or msgspec.UNSET


def attempt_key_of(msg_id: str) -> str:
    """The attempt key of a task message id (an id without a life tag is one already)."""
    return msg_id.partition(LIFE_SEPARATOR)[0]
