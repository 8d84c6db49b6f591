"""A stored workflow value is decoded once and kept for the next read of the same bytes
(dagnats/client/workflows.py `decoded_once`): a start reads the latest entry each time but no
longer decodes it twice; a new value (a new registration) is decoded again; a value that is
no definition raises each time and is not kept; the kept values are bounded."""

from __future__ import annotations

import pytest

from dagnats.client import workflows
from dagnats.runtime.resources import StoredWorkflowError, encode_stored_workflow
from kernel import codec
from kernel.workflow.builder import Workflow


def stored(name: str, revision: int = 1, task: str = "t") -> bytes:
    definition = codec.encode(Workflow(name).task("a", task=task).build())
    return encode_stored_workflow(definition, revision)


def test_the_same_value_is_decoded_once_and_a_new_one_again() -> None:
    first = workflows.decoded_once("wf", stored("wf"), 1)
    again = workflows.decoded_once("wf", stored("wf"), 1)  # equal bytes, another object
    assert again[0] is first[0] and again[1] == first[1] == 1
    changed = workflows.decoded_once("wf", stored("wf", 2, task="other"), 2)
    assert changed[0] is not first[0]
    assert changed[1] == 2 and changed[0].steps[0].task == "other"


def test_a_value_that_is_no_definition_raises_each_time_and_is_not_kept() -> None:
    for _ in range(2):
        with pytest.raises(StoredWorkflowError):
            workflows.decoded_once("bad", b'{"revision":1,"steps":7}', 3)
    assert b'{"revision":1,"steps":7}' not in workflows._decoded


def test_the_values_kept_are_bounded() -> None:
    values = [stored(f"wf{index}") for index in range(workflows.decoded_kept_max + 5)]
    for index, value in enumerate(values):
        workflows.decoded_once(f"wf{index}", value, 1)
    assert len(workflows._decoded) == workflows.decoded_kept_max
    assert values[0] not in workflows._decoded and values[-1] in workflows._decoded
