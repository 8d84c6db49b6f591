"""The JSON Schema of the workflow format (kernel/workflow/schema.py, `dagnats workflow schema`).

The committed copy beside the examples is what `workflow_schema()` generates now (regenerate
with `dagnats workflow schema -o examples/workflow.schema.json`); it is a valid draft 2020-12
schema; every example workflow and every workflow of the golden histories (in the user's form)
is valid under it; a few invalid documents are rejected by both the schema and the parser; the
examples' `$schema` names the committed copy by a relative path; the command prints it.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any, Final

import pytest
from jsonschema import Draft202012Validator

from dagnats.demo import EXAMPLES_DIR
from kernel.codec import decode_decision
from kernel.errors import WorkflowInvalidError
from kernel.events import RunStarted
from kernel.workflow import parse_workflow
from kernel.workflow.document import workflow_to_document
from kernel.workflow.schema import SCHEMA_FILE_NAME, schema_json, workflow_schema
from tests.fault_support import REPO_ROOT, dagnats_command

COMMITTED: Final = REPO_ROOT / "examples" / SCHEMA_FILE_NAME
HISTORIES: Final = REPO_ROOT / "tests" / "histories"
EXAMPLE_WORKFLOWS: Final = sorted((REPO_ROOT / "examples").glob("*/workflow.json"))


def validator() -> Draft202012Validator:
    return Draft202012Validator(json.loads(COMMITTED.read_text(encoding="utf-8")))


def golden_workflows() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted(HISTORIES.glob("*.jsonl")):
        for line in path.read_bytes().splitlines():
            for event in decode_decision(line).events:
                if isinstance(event, RunStarted):
                    found.append((path.name, workflow_to_document(event.workflow)))
    return found


def test_the_committed_schema_is_what_the_model_generates() -> None:
    assert COMMITTED.read_bytes() == schema_json(), (
        "examples/workflow.schema.json is stale: run "
        "`dagnats workflow schema -o examples/workflow.schema.json`"
    )
    assert (EXAMPLES_DIR / SCHEMA_FILE_NAME).read_bytes() == schema_json()  # the shipped path


def test_the_schema_is_a_valid_draft_2020_12_schema_with_the_user_field_names() -> None:
    schema = workflow_schema()
    Draft202012Validator.check_schema(schema)
    step = schema["$defs"]["step"]["properties"]
    assert {"depends_on", "timeout", "retry", "config", "type"} <= set(step)
    assert "max_attempts" in schema["$defs"]["retry"]["properties"]
    assert "timeout_ms" not in step and "timeout" in schema["properties"]
    sleep = schema["$defs"]["config.sleep"]["properties"]["duration"]
    assert {option["type"] for option in sleep["anyOf"]} == {"string", "integer"}


@pytest.mark.parametrize("path", EXAMPLE_WORKFLOWS, ids=lambda p: p.parent.name)
def test_every_example_workflow_is_valid_and_names_the_committed_schema(path: Path) -> None:
    assert len(EXAMPLE_WORKFLOWS) >= 2
    document = json.loads(path.read_text(encoding="utf-8"))
    errors = [error.message for error in validator().iter_errors(document)]
    assert errors == []
    assert (path.parent / document["$schema"]).resolve() == COMMITTED.resolve()
    parse_workflow(path.read_bytes())  # and the parser agrees


def test_every_golden_history_workflow_is_valid_under_the_schema() -> None:
    workflows = golden_workflows()
    assert len(workflows) >= 16
    check = validator()
    for name, document in workflows:
        errors = [f"{list(e.absolute_path)}: {e.message}" for e in check.iter_errors(document)]
        assert errors == [], name


INVALID: Final = {
    "unknown top-level field": {"name": "w", "steps": [{"id": "a", "task": "t"}], "bogus": 1},
    "no steps": {"name": "w", "steps": []},
    "bad duration": {"name": "w", "steps": [{"id": "a", "task": "t", "timeout": "soon"}]},
    "too many attempts": {
        "name": "w", "steps": [{"id": "a", "task": "t", "retry": {"max_attempts": 10_000}}],
    },
    "unknown step type": {"name": "w", "steps": [{"id": "a", "type": "teleport"}]},
    "task step without task": {"name": "w", "steps": [{"id": "a"}]},
    "sleep config field unknown": {
        "name": "w", "steps": [{"id": "a", "type": "sleep", "config": {"nap": "1s"}}],
    },
    "map max_items over its bound": {
        "name": "w",
        "steps": [
            {"id": "a", "task": "t"},
            {"id": "m", "type": "map", "task": "t", "depends_on": ["a"],
             "config": {"items_path": "a.items", "max_items": 10**9}},
        ],
    },
    "bad step id": {"name": "w", "steps": [{"id": "a b", "task": "t"}]},
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(INVALID))
def test_an_invalid_document_is_rejected_by_the_schema_and_by_the_parser(name: str) -> None:
    document = INVALID[name]
    assert list(validator().iter_errors(document)), f"the schema accepts {name}"
    with pytest.raises(WorkflowInvalidError):
        parse_workflow(json.dumps(document))


def test_dagnats_workflow_schema_prints_it_and_writes_it(tmp_path: Path) -> None:
    printed = subprocess.run(
        [*dagnats_command(), "workflow", "schema"],
        cwd=tmp_path, capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout == schema_json()
    target = tmp_path / "out" / "schema.json"
    target.parent.mkdir()
    written = subprocess.run(
        [*dagnats_command(), "workflow", "schema", "--output", str(target)],
        cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert written.returncode == 0, written.stderr
    assert target.read_bytes() == schema_json()
    refused = subprocess.run(
        [*dagnats_command(), "workflow", "schema", "--output", str(tmp_path / "no" / "x.json")],
        cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert refused.returncode == 1 and "error: --output" in refused.stderr
    assert "Traceback" not in refused.stderr
