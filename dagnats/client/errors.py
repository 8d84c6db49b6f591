"""The errors of the Python client: each names the run (or workflow) and says what to do.

Raised by `dagnats.client.core`, `approvals` and `chains`; the CLI prints them as one line plus
a hint. May import only `kernel` (and is imported by every module of `dagnats/client/`).
"""

from __future__ import annotations

from kernel.errors import DagnatsError
from kernel.state import RunState


class RunNotFoundError(DagnatsError):
    """No run with that id has any history."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        super().__init__(f"run {run_id!r} does not exist (no history); check the id")


class WorkflowNotFoundError(DagnatsError):
    def __init__(self, name: str, known: list[str]) -> None:
        self.name = name
        shown = ", ".join(known[:20]) or "none registered"
        super().__init__(f"workflow {name!r} is not registered (known: {shown})")


class WorkflowRevisionNotFoundError(DagnatsError):
    """The workflow exists; the revision asked for is not one of those kept."""

    hint = "see its revisions with `dagnats workflow show NAME`"

    def __init__(self, name: str, revision: int, known: list[int]) -> None:
        self.name = name
        self.revision = revision
        shown = ", ".join(map(str, known))
        rule = "revisions are numbered from 1" if revision < 1 else f"revisions kept: {shown}"
        super().__init__(f"workflow {name!r} has no revision {revision} ({rule})")


class RunExistsError(DagnatsError):
    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        super().__init__(f"run {run_id!r} already exists with another workflow or input")


class RunFinishedError(DagnatsError):
    def __init__(self, run_id: str, status: str) -> None:
        self.run_id = run_id
        self.status = status
        super().__init__(f"run {run_id!r} already ended as {status}")


class WaitTimeoutError(DagnatsError):
    def __init__(self, run_id: str, timeout_s: float, state: RunState) -> None:
        self.run_id = run_id
        self.state = state
        super().__init__(f"run {run_id!r} did not end within {timeout_s}s (it is {state.status})")


class ApprovalResolvedError(DagnatsError):
    """The approval was already resolved (by someone else, or by its deadline)."""

    hint = "see who decided with `dagnats approval show RUN_ID STEP_ID`"

    def __init__(self, run_id: str, key: str, message: str) -> None:
        self.run_id = run_id
        self.key = key
        super().__init__(message)


class ApprovalNotFoundError(DagnatsError):
    """No such approval waits (unknown step, not asked yet, or the run ended)."""

    hint = "list pending approvals with `dagnats approval list`"

    def __init__(self, run_id: str, key: str, message: str) -> None:
        self.run_id = run_id
        self.key = key
        super().__init__(message)
