"""A workflow's `input_schema` checked against a start's input (JSON Schema, draft 2020-12).

The client, the CLI and the engine share this check: a start whose input does not meet the
schema is refused at the client and the CLI (no run is created) and, when it reaches the engine
around them, recorded as a failed run naming the errors. Validation is the `jsonschema`
library's (Draft202012Validator); errors are listed as `path: value — rule`, at most
`input_schema_errors_max` of them. `jsonschema` is imported on the first check of a workflow
that has a schema (a serve whose workflows have none never loads it: it is on the engine's
start path).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Final

import msgspec

from kernel.errors import DagnatsError
from kernel.workflow import WorkflowDef

if TYPE_CHECKING:
    import jsonschema

input_schema_errors_max: Final = 20
VALUE_SHOWN_MAX: Final = 80


class InputSchemaError(DagnatsError):
    """A start's input does not meet its workflow's input_schema (`errors`: each one)."""

    def __init__(self, workflow: str, errors: tuple[str, ...]) -> None:
        self.workflow = workflow
        self.errors = errors
        listed = "; ".join(errors)
        super().__init__(f"input does not meet the input_schema of workflow {workflow!r}: {listed}")


@functools.lru_cache(maxsize=64)
def _validator(schema_json: bytes) -> jsonschema.Draft202012Validator:
    import jsonschema

    schema = msgspec.json.decode(schema_json)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def input_errors(workflow: WorkflowDef, input_json: bytes) -> tuple[str, ...]:
    """The schema errors of a start's input ("$.path: value — rule"); () when it meets the
    schema or the workflow has none. A schema that is not a valid JSON Schema is one error."""
    admission = workflow.admission
    if admission is None or admission.schema is None:
        return ()
    import jsonschema

    try:
        validator = _validator(bytes(admission.schema))
    except jsonschema.SchemaError as error:
        return (f"input_schema: is not a valid JSON Schema: {error.message}",)
    try:
        value = msgspec.json.decode(input_json)
    except msgspec.DecodeError as error:
        return (f"$: is not JSON ({error})",)
    found: list[str] = []
    for problem in validator.iter_errors(value):
        if len(found) >= input_schema_errors_max:
            break
        path = "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in problem.path)
        shown = msgspec.json.encode(problem.instance).decode()
        if len(shown) > VALUE_SHOWN_MAX:
            shown = shown[: VALUE_SHOWN_MAX - 1] + "…"
        found.append(f"{path}: {shown} — {problem.message} ({problem.validator})")
    return tuple(found)


def check_input(workflow: WorkflowDef, input_json: bytes) -> None:
    """Raise InputSchemaError when the input does not meet the workflow's input_schema."""
    errors = input_errors(workflow, input_json)
    if errors:
        raise InputSchemaError(workflow.name, errors)
