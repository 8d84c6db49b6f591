"""Each step type's config is a frozen msgspec Struct with its bounds, converted once per
definition value and carried typed (`StepDef.settings`), never stored (the bytes stay `config`).
"""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from kernel import registry
from kernel.codec import decode_decision, encode
from kernel.commands import StartRun
from kernel.workflow import StepDef, WorkflowDef
from steps.map_config import MapConfig

HISTORIES = Path(__file__).parent / "histories"


def _golden_workflows() -> list[WorkflowDef]:
    found = []
    for path in sorted(HISTORIES.glob("*.jsonl")):
        command = decode_decision(path.read_bytes().splitlines()[0]).command
        if isinstance(command, StartRun):
            found.append(command.workflow)
    return found


WORKFLOWS = _golden_workflows()
STEPS = [step for workflow in WORKFLOWS for step in workflow.steps]


def test_the_golden_workflows_hold_every_step_type() -> None:
    assert {step.type for step in STEPS} == set(registry.names())


@pytest.mark.parametrize("step", STEPS, ids=[f"{s.type}:{s.id}" for s in STEPS])
def test_a_step_carries_its_typed_config_converted_once_within_its_bounds(step: StepDef) -> None:
    settings = step.settings
    assert step.settings is settings, "converted once per definition value"
    if settings is None:
        assert registry.get(step.type).read_config(step) is None
        return
    assert isinstance(settings, msgspec.Struct)
    assert type(settings).__struct_config__.frozen, f"{type(settings).__name__} is frozen"
    again = msgspec.json.decode(msgspec.json.encode(settings), type=type(settings))
    assert again == settings, "the values the reader produced hold the Struct's bounds"


def test_the_typed_config_is_never_part_of_the_stored_bytes() -> None:
    workflow = next(w for w in WORKFLOWS if any(s.type == "map" for s in w.steps))
    step = next(s for s in workflow.steps if s.type == "map")
    before = encode(step)
    assert isinstance(step.settings, MapConfig)
    assert encode(step) == before and b"settings" not in before
    assert msgspec.json.decode(before, type=StepDef) == step


@pytest.mark.parametrize(
    "document",
    [{"max_items": 0}, {"max_items": 100_001}, {"max_concurrency": 0}],
)
def test_a_config_out_of_its_bounds_does_not_convert(document: dict[str, object]) -> None:
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert(document, MapConfig)
