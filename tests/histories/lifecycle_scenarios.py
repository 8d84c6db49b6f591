"""Golden scenarios of run lifecycle operations (kernel.reopen): a failed run's dead letter
discarded, the run reopened in place and completed, another reopened and then terminated."""

from __future__ import annotations

from typing import Final

from kernel.commands import AnyCommand
from tests.kernel_dsl import complete, fail, start, task, workflow
from tests.lifecycle_dsl import discard, reopen, terminate

LIFECYCLE_SCENARIOS: Final[dict[str, tuple[AnyCommand, ...]]] = {
    "reopened_then_completed": (
        start(workflow(task("fetch"), task("charge", "fetch"), task("mail", "charge")), {"n": 1}),
        complete("fetch", {"rows": 3}),
        fail("charge", "card declined", kind="non_retryable"),
        discard("charge", 1),
        reopen("charge"),
        complete("charge", {"paid": True}, attempt=2),
        complete("mail", {"sent": True}),
    ),
    "reopened_then_terminated": (
        start(workflow(task("a"), task("b", "a"))),
        complete("a", 1),
        fail("b", "bad", kind="non_retryable"),
        reopen(),
        terminate("the payment provider is gone"),
    ),
}
