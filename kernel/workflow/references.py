"""Rules between the steps of a typed workflow: ids, references, handlers and cycles.

A step names others by id in `depends_on`, `on_failure` and `compensate`; ids are unique; a
step named by `on_failure` or `compensate` (a *handler*) stands apart from the DAG and serves
exactly one step; and `depends_on` has no cycle. `kernel.workflow.rules` calls these checks
step by step and then once for the whole set. Only checks over typed values: no JSON reading,
nothing raised. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from kernel import limits
from kernel.workflow.graph import find_cycles
from kernel.workflow.model import StepDef
from kernel.workflow.problems import Problems

KNOWN_IDS_SHOWN_MAX: Final = 10
CYCLE_STEPS_SHOWN_MAX: Final = 20
REFERENCE_RULE: Final = "must be a non-empty string naming another step"


class KnownSteps:
    """The steps by id, each id with the index of its first step (empty ids are not known)."""

    def __init__(self, steps: Sequence[StepDef]) -> None:
        self.first: dict[str, tuple[int, StepDef]] = {}
        for index, step in enumerate(steps):
            if step.id and step.id not in self.first:
                self.first[step.id] = (index, step)
        self.text = known_ids_text(list(self.first))

    def __contains__(self, step_id: object) -> bool:
        return step_id in self.first


def known_ids_text(ids: Sequence[str]) -> str:
    """The known step ids for a problem's rule, the first few of a long list."""
    shown = ", ".join(ids[:KNOWN_IDS_SHOWN_MAX])
    if len(ids) > KNOWN_IDS_SHOWN_MAX:
        shown += f", ... ({len(ids)} steps)"
    return shown or "none"


def check_unique_id(step: StepDef, index: int, known: KnownSteps, problems: Problems) -> None:
    """A problem when an earlier step has the same id."""
    first = known.first.get(step.id)
    if first is not None and first[0] != index:
        rule = f"duplicates steps[{first[0]}].id; ids must be unique"
        problems.add(f"steps[{index}].id", step.id, rule)


def check_depends_on(step: StepDef, path: str, known: KnownSteps, problems: Problems) -> None:
    """Problems of `depends_on`: too many ids, a repeated id, the step itself, an unknown id."""
    path = f"{path}.depends_on"
    count = len(step.depends_on)
    if count > limits.dependencies_per_step_max:
        rule = f"holds {count} ids; the limit is {limits.dependencies_per_step_max}"
        problems.add_shown(path, f"[... {count} ids]", rule)
        return
    seen: dict[str, int] = {}
    for position, name in enumerate(step.depends_on):
        item_path = f"{path}[{position}]"
        if name in seen:
            problems.add(item_path, name, f"repeats depends_on[{seen[name]}]")
            continue
        seen[name] = position
        if name == step.id:
            problems.add(item_path, name, "names the step itself; a step cannot depend on itself")
        elif name not in known:
            rule = f"names no step of this workflow (known: {known.text})"
            problems.add(item_path, name, rule)


def check_reference(
    target: str | None, step_id: str, path: str, known: KnownSteps, problems: Problems
) -> None:
    """Problems of an `on_failure` or `compensate` naming `target` (None: left out)."""
    if target is None:
        return
    if not target:
        problems.add(path, target, REFERENCE_RULE)
    elif target == step_id:
        problems.add(path, target, "names the step itself; it must name another step")
    elif target not in known:
        rule = f"names no step of this workflow (known: {known.text})"
        problems.add(path, target, rule)


def check_between_steps(steps: Sequence[StepDef], known: KnownSteps, problems: Problems) -> None:
    """Add the problems of handlers and of cycles among the steps."""
    served = _handlers(steps, known, problems)
    for index, step in enumerate(steps):
        handler_of = served.get(step.id)
        if handler_of is not None and step.depends_on and known.first[step.id][0] == index:
            rule = (
                f"must be empty: this step is a handler (named by {handler_of}), "
                "which runs only when the step it serves fails or is compensated"
            )
            problems.add(f"steps[{index}].depends_on", list(step.depends_on), rule)
        for position, name in enumerate(step.depends_on):
            if name in served and name != step.id:
                rule = f"names a handler step (named by {served[name]}); no step may depend on one"
                problems.add(f"steps[{index}].depends_on[{position}]", name, rule)
    _cycles(known, problems)


def _handlers(steps: Sequence[StepDef], known: KnownSteps, problems: Problems) -> dict[str, str]:
    """Each handler id with the path that names it; a second reference is a problem."""
    served: dict[str, str] = {}
    for index, step in enumerate(steps):
        for key, target in (("on_failure", step.on_failure), ("compensate", step.compensate)):
            if target is None or target == step.id or target not in known:
                continue  # reported by check_reference
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


def _cycles(known: KnownSteps, problems: Problems) -> None:
    """One problem per cycle of `depends_on`, at the edge leaving its earliest step."""
    graph = {
        step_id: [name for name in step.depends_on if name != step_id]  # self: reported already
        for step_id, (_, step) in known.first.items()
    }
    for cycle in find_cycles(graph):
        index, step = known.first[cycle[0]]
        following = cycle[1] if len(cycle) > 1 else cycle[0]
        position = step.depends_on.index(following)
        shown = list(cycle[:CYCLE_STEPS_SHOWN_MAX])
        if len(cycle) > CYCLE_STEPS_SHOWN_MAX:
            shown.append(f"... ({len(cycle)} steps)")
        text = " -> ".join((*shown, cycle[0]))
        path = f"steps[{index}].depends_on[{position}]"
        problems.add(path, following, f"depends_on forms a cycle: {text}")
