"""Admission on the HTTP API: a start's `run_at` (README "Admission and flow control") and a
start refused by the workflow's input_schema, as a 422 problem listing each error's path in
the request, its value and its rule (no run is created)."""

from __future__ import annotations

from dagnats.api.problems import FieldProblem, ProblemError
from dagnats.input_schema import InputSchemaError
from dagnats.run_at import RunAtError, run_at_ms_of
from dagnats.runtime.clock import now_ms


def start_time(run_at: str | int | None) -> int | None:
    """A start's `run_at` in ms since the epoch (None: now); 400 naming it when unreadable."""
    if run_at is None or isinstance(run_at, int):
        return run_at
    try:
        return run_at_ms_of(run_at, None, now_ms(), field="run_at")
    except RunAtError as error:
        raise ProblemError(
            400, str(error), kind="validation", field="run_at", hint="e.g. 2030-01-31T09:00:00Z"
        ) from None


def schema_problem(error: InputSchemaError) -> ProblemError:
    """422 listing each input_schema error (path, value and rule); no run was created."""
    found = []
    for text in error.errors:
        path, _, rest = text.partition(": ")
        found.append(FieldProblem(field="input" + path.removeprefix("$"), detail=rest))
    return ProblemError(
        422, str(error).splitlines()[0], kind="input-schema", field=found[0].field,
        hint="fix the input values listed in errors", errors=tuple(found),
    )  # fmt: skip
