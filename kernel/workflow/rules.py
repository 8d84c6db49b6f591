"""Rules between the steps of a workflow: handlers and cycles; and the bounded problem list.

`kernel.workflow.parse` reads each step on its own; this module then checks what only the
whole set of steps can show: a step named by `on_failure` or `compensate` (a *handler*) stands
apart from the DAG and serves exactly one step, and `depends_on` has no cycle. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from kernel.workflow.fields import Problems
from kernel.workflow.graph import find_cycles
from kernel.workflow.model import StepDef

KNOWN_IDS_SHOWN_MAX: Final = 10
CYCLE_STEPS_SHOWN_MAX: Final = 20


def first_index_by_id(steps: Sequence[object]) -> dict[str, int]:
    """Each string `id` of the raw steps with the index of its first step, in written order."""
    first_index: dict[str, int] = {}
    for index, step in enumerate(steps):
        step_id = step.get("id") if isinstance(step, dict) else None
        if isinstance(step_id, str) and step_id and step_id not in first_index:
            first_index[step_id] = index
    return first_index


def known_ids_text(first_index: dict[str, int]) -> str:
    """The known step ids for a problem's rule, the first few of a long list."""
    ids = list(first_index)
    shown = ", ".join(ids[:KNOWN_IDS_SHOWN_MAX])
    if len(ids) > KNOWN_IDS_SHOWN_MAX:
        shown += f", ... ({len(ids)} steps)"
    return shown or "none"


def check_between_steps(parsed: Sequence[tuple[int, StepDef]], problems: Problems) -> None:
    """Add the problems of handlers and of cycles among the parsed steps (index, step)."""
    first: dict[str, tuple[int, StepDef]] = {}
    for index, step in parsed:
        first.setdefault(step.id, (index, step))
    served = _handlers(parsed, first, problems)
    for index, step in parsed:
        handler_of = served.get(step.id)
        if handler_of is not None and step.depends_on and first[step.id][0] == index:
            rule = (
                f"must be empty: this step is a handler (named by {handler_of}), "
                "which runs only when the step it serves fails or is compensated"
            )
            problems.add(f"steps[{index}].depends_on", list(step.depends_on), rule)
        for position, name in enumerate(step.depends_on):
            if name in served and name != step.id:
                rule = f"names a handler step (named by {served[name]}); no step may depend on one"
                problems.add(f"steps[{index}].depends_on[{position}]", name, rule)
    _cycles(first, problems)


def _handlers(
    parsed: Sequence[tuple[int, StepDef]], first: dict[str, tuple[int, StepDef]],
    problems: Problems,
) -> dict[str, str]:  # fmt: skip
    """Each handler id with the path that names it; a second reference is a problem."""
    served: dict[str, str] = {}
    for index, step in parsed:
        for key, target in (("on_failure", step.on_failure), ("compensate", step.compensate)):
            if target is None or target == step.id or target not in first:
                continue  # reported where the field was read
            path = f"steps[{index}].{key}"
            if target in served:
                rule = (
                    f"names a step that is already the handler named by {served[target]}; "
                    "a handler serves exactly one step"
                )
                problems.add(path, target, rule)
            else:
                served[target] = path
    return served


def _cycles(first: dict[str, tuple[int, StepDef]], problems: Problems) -> None:
    """One problem per cycle of `depends_on`, at the edge leaving its earliest step."""
    graph = {
        step_id: [name for name in step.depends_on if name != step_id]  # self: reported already
        for step_id, (_, step) in first.items()
    }
    for cycle in find_cycles(graph):
        index, step = first[cycle[0]]
        following = cycle[1] if len(cycle) > 1 else cycle[0]
        position = step.depends_on.index(following)
        shown = list(cycle[:CYCLE_STEPS_SHOWN_MAX])
        if len(cycle) > CYCLE_STEPS_SHOWN_MAX:
            shown.append(f"... ({len(cycle)} steps)")
        text = " -> ".join((*shown, cycle[0]))
        path = f"steps[{index}].depends_on[{position}]"
        problems.add(path, following, f"depends_on forms a cycle: {text}")
