"""Write the golden histories: `python -m tests.histories.make_golden`.

Each scenario is a run driven by commands through `decide`; every decision that appends is one
line of `<name>.jsonl` (the exact bytes `kernel.codec.encode_decision` gives), and the fold of
all its events, encoded with `kernel.codec.encode`, is `<name>.expected.json`. The output is
deterministic: times come from the scenario clock, seeds are fixed. Run it only when a change
of the history format is intended; `tests/test_golden_histories.py` shows what changed.

`v1_step_failed.jsonl` is not written here: it holds bytes of an old schema version that this
code can no longer produce, kept as they were.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from kernel.codec import encode, encode_decision
from kernel.commands import AnyCommand
from kernel.events import AnyEvent
from kernel.reducer import fold
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

SCENARIOS: Final[dict[str, tuple[AnyCommand, ...]]] = {
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


def history(
    commands: tuple[AnyCommand, ...],
) -> tuple[tuple[AnyCommand, tuple[AnyEvent, ...]], ...]:
    """The decisions that append (command, events), in order."""
    decisions = []
    for command, events in given(*commands).history:
        assert command is not None
        if events:
            decisions.append((command, events))
    return tuple(decisions)


def render(commands: tuple[AnyCommand, ...]) -> tuple[bytes, bytes]:
    """The `.jsonl` bytes and the `.expected.json` bytes of one scenario."""
    decisions = history(commands)
    lines = b"".join(encode_decision(command, events) + b"\n" for command, events in decisions)
    state = fold(event for _, events in decisions for event in events)
    return lines, encode(state) + b"\n"


def main() -> None:
    for name, commands in SCENARIOS.items():
        lines, expected = render(commands)
        (HERE / f"{name}.jsonl").write_bytes(lines)
        (HERE / f"{name}.expected.json").write_bytes(expected)
        count = len(lines.splitlines())
        print(f"wrote {name}.jsonl ({count} decisions) and {name}.expected.json")


if __name__ == "__main__":
    main()
