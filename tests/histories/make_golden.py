"""Write the golden histories: `python -m tests.histories.make_golden`.

Each scenario is a run driven by commands through `decide`; every decision that appends is one
line of `<name>.jsonl` (the exact bytes `kernel.codec.encode_decision` gives), and the fold of
all its events, encoded with `kernel.codec.encode`, is `<name>.expected.json`. The output is
deterministic: times come from the scenario clock, seeds are fixed. Run it only when a change
of the history format is intended; `tests/test_golden_histories.py` shows what changed.

The task-only scenarios are below; one or more per other step type (and `cancel_on`) are in
`tests/histories/step_scenarios.py`.

`v1_step_failed.jsonl` is not written here: it holds bytes of an old schema version that this
code can no longer produce, kept as they were; nor is `signals_without_ids.jsonl`, signals sent
before a signal carried its id (they still decode and decide the same). Likewise a `.jsonl`
whose lines decode to exactly the decisions the code makes now, in older bytes (the task
scenarios were recorded before fields with defaults such as `cancel_on` and `depth` were
added), is kept: it proves that an older writer's bytes still read as the same history. Delete
such a file to write it anew.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final, NamedTuple

from kernel.batch import batch_command
from kernel.codec import decode_decision, encode, encode_decision
from kernel.commands import AnyCommand, StoredCommand
from kernel.events import AnyEvent
from kernel.reducer import fold
from tests.histories.admission_scenarios import ADMISSION_SCENARIOS
from tests.histories.control_scenarios import CONTROL_SCENARIOS
from tests.histories.lifecycle_scenarios import LIFECYCLE_SCENARIOS
from tests.histories.step_scenarios import STEP_SCENARIOS
from tests.kernel_dsl import (
    cancel,
    complete,
    fail,
    fire_retry,
    given,
    retry,
    start,
    started,
    task,
    workflow,
)

HERE: Final = Path(__file__).parent


class Together(NamedTuple):
    """Commands of one run decided in turn and appended as ONE history message (a DecideAll,
    kernel/batch.py), as the engine's batch path does with a fetch's results; those that
    decide nothing are left out of it."""

    commands: tuple[AnyCommand, ...]


Scene = AnyCommand | Together

# The batch command: a fan-out's results decided together (a duplicate left out, a failure
# among them), then a retried attempt and the last branch together, then the join alone.
BATCH_SCENARIOS: Final[dict[str, tuple[Scene, ...]]] = {
    "fan_out_results_together": (
        start(
            workflow(
                *(task(step_id, retry=retry(3)) for step_id in "abcd"),
                task("join", "a", "b", "c", "d"),
                name="fan_out",
            ),
            {"items": 4},
        ),
        Together(
            (
                complete("a", {"i": 1}),
                complete("b", {"i": 2}),
                complete("a", {"i": 1}),
                fail("c", "flaky", seed=7),
            )
        ),
        fire_retry("c", 2),
        Together((complete("c", {"i": 3}, attempt=2), complete("d", {"i": 4}))),
        complete("join", {"sum": 10}),
    ),
}

TASK_SCENARIOS: Final[dict[str, tuple[AnyCommand, ...]]] = {
    "retry_then_success": (
        start(
            workflow(
                task(
                    "fetch",
                    retry=retry(3, "exponential", initial_delay_ms=200, jitter=0.25),
                    timeout_ms=30_000,
                ),
                task("store", "fetch"),
                name="fetch_and_store",
                timeout_ms=3_600_000,
            ),
            {"url": "https://example.com/a"},
            seed=11,
        ),
        started("fetch", worker_id="w1"),
        fail("fetch", "connection reset", seed=4242),
        fire_retry("fetch", 2),
        started("fetch", 2, worker_id="w2"),
        complete("fetch", {"body": "hello", "status": 200}, attempt=2),
        started("store"),
        complete("store", {"stored": True}),
    ),
    "on_failure_recovery": (
        start(
            workflow(
                task("charge", on_failure="manual_review"),
                task("ship", "charge"),
                task("manual_review"),
                name="order",
            ),
            {"order": 17},
        ),
        fail("charge", "card declined", kind="non_retryable"),
        started("manual_review"),
        complete("manual_review", {"approved": True}),
        complete("ship", {"tracking": "T-1"}),
    ),
    "failed_with_compensations": (
        start(
            workflow(
                task("reserve", compensate="release"),
                task("charge", "reserve", compensate="refund"),
                task("ship", "charge"),
                task("release"),
                task("refund"),
                name="saga",
            ),
            {"sku": "x", "qty": 2},
        ),
        complete("reserve", {"reservation": "R1"}),
        complete("charge", {"payment": "P1"}),
        fail("ship", "warehouse closed", kind="non_retryable"),
        complete("refund", {"refunded": True}),
        complete("release", {"released": True}),
    ),
    "cancelled": (
        start(
            workflow(
                task("provision", compensate="deprovision"),
                task("train", "provision", timeout_ms=600_000),
                task("deprovision"),
                name="training",
            ),
            {"gpus": 8},
        ),
        complete("provision", {"cluster": "c-9"}),
        started("train"),
        cancel("user stopped it"),
        cancel("again"),
        complete("deprovision"),
    ),
}
SCENARIOS: Final[dict[str, tuple[Scene, ...]]] = {
    **TASK_SCENARIOS, **STEP_SCENARIOS, **LIFECYCLE_SCENARIOS, **ADMISSION_SCENARIOS,
    **CONTROL_SCENARIOS, **BATCH_SCENARIOS,
}  # fmt: skip


def history(
    scenes: tuple[Scene, ...],
) -> tuple[tuple[StoredCommand, tuple[AnyEvent, ...]], ...]:
    """The decisions that append (command, events), in order: a `Together` is one."""
    flat: list[AnyCommand] = []
    sizes: list[int] = []
    for scene in scenes:
        group = scene.commands if isinstance(scene, Together) else (scene,)
        flat.extend(group)
        sizes.append(len(group))
    decided = iter(given(*flat).history)
    decisions: list[tuple[StoredCommand, tuple[AnyEvent, ...]]] = []
    for size in sizes:
        kept = [(command, events) for command, events in (next(decided) for _ in range(size))]
        kept = [(command, events) for command, events in kept if events]
        if kept:
            commands = tuple(command for command, _ in kept if command is not None)
            events = tuple(event for _, group in kept for event in group)
            decisions.append((batch_command(commands), events))
    return tuple(decisions)


def render(commands: tuple[Scene, ...]) -> tuple[bytes, bytes]:
    """The `.jsonl` bytes and the `.expected.json` bytes of one scenario."""
    decisions = history(commands)
    lines = b"".join(encode_decision(command, events) + b"\n" for command, events in decisions)
    state = fold(event for _, events in decisions for event in events)
    return lines, encode(state) + b"\n"


def same_decisions(recorded: bytes, rendered: bytes) -> bool:
    """Whether two `.jsonl` texts decode to the same decisions, line by line."""
    old, new = recorded.splitlines(), rendered.splitlines()
    return len(old) == len(new) and all(
        decode_decision(a) == decode_decision(b) for a, b in zip(old, new, strict=True)
    )


def main() -> None:
    for name, commands in SCENARIOS.items():
        lines, expected = render(commands)
        path = HERE / f"{name}.jsonl"
        recorded = path.read_bytes() if path.is_file() else b""
        count = len(lines.splitlines())
        if recorded != lines and recorded and same_decisions(recorded, lines):
            print(f"kept {name}.jsonl (older bytes of the same {count} decisions)")
        else:
            path.write_bytes(lines)
            print(f"wrote {name}.jsonl ({count} decisions)")
        (HERE / f"{name}.expected.json").write_bytes(expected)


if __name__ == "__main__":
    main()
