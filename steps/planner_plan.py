"""The `planner` step's config, and how a plan is read, validated and namespaced. Pure: no I/O.

A plan is `{"steps": [...]}` in the workflow step format. It is validated by the same parser
as a registered workflow (`kernel.workflow.parse.parse_document`), then against the planner's
config (`max_steps`, `max_depth`, `allowed_tasks`, `allowed_types`) and the run's bound on
dynamic steps; every problem is reported. Valid steps get ids `<planner>.<id>`, with their
`depends_on`, `skip_if.step_id`, `on_failure` and `compensate` rewritten the same way.
"""

from __future__ import annotations

from typing import Annotated, Final

import msgspec

from kernel import appended, limits, registry
from kernel.errors import Problem, show_value
from kernel.state import RunState
from kernel.workflow import StepDef
from kernel.workflow.parse import parse_document
from kernel.workflow.problems import Problems
from steps import base
from steps.config_read import config_document, read_int, read_names, unknown_fields

CONFIG_FIELDS: Final = ("max_steps", "max_depth", "allowed_tasks", "allowed_types")
PLAN_FIELDS: Final = ("steps",)
max_steps_default: Final = 20
PLANNER: Final = "planner"

replace = msgspec.structs.replace


class PlannerConfig(msgspec.Struct, frozen=True, kw_only=True):
    max_steps: Annotated[int, msgspec.Meta(ge=1, le=limits.plan_steps_max)] = max_steps_default
    # plan levels under (and including) this planner's own plan
    max_depth: Annotated[int, msgspec.Meta(ge=1, le=limits.plan_depth_max)] = 1
    allowed_tasks: tuple[str, ...] | None = None  # None: any task
    allowed_types: tuple[str, ...] = ("task",)


def read_config(step: StepDef, path: str) -> PlannerConfig | tuple[Problem, ...]:
    """The planner's config, or every problem with it."""
    document = config_document(step)
    problems: list[Problem] = []
    unknown_fields(document, CONFIG_FIELDS, path, problems)
    max_steps = read_int(
        document, "max_steps", path, problems,
        low=1, high=limits.plan_steps_max, default=max_steps_default,
    )  # fmt: skip
    max_depth = read_int(
        document, "max_depth", path, problems, low=1, high=limits.plan_depth_max, default=1
    )
    allowed_tasks = read_names(document, "allowed_tasks", path, problems)
    allowed_types = read_names(document, "allowed_types", path, problems) or ("task",)
    known = registry.names()
    for index, name in enumerate(allowed_types):
        if name not in known:
            rule = f"is not a step type (known: {', '.join(known)})"
            where = f"{path}.config.allowed_types[{index}]"
            problems.append(Problem(path=where, value=show_value(name), rule=rule))
    if problems:
        return tuple(problems)
    return PlannerConfig(
        max_steps=max_steps,
        max_depth=max_depth,
        allowed_tasks=allowed_tasks,
        allowed_types=allowed_types,
    )


def config_of(state: RunState, step_id: str) -> PlannerConfig:
    """The planner's typed config (validated at registration, or as a plan)."""
    return base.config_of(state, step_id, PlannerConfig)


def read_plan(
    state: RunState, planner_id: str, output: msgspec.Raw
) -> tuple[StepDef, ...] | tuple[Problem, ...]:
    """The namespaced steps of a valid plan (none for an empty plan), or every problem."""
    problems = Problems()
    try:
        document = msgspec.json.decode(bytes(output))
    except msgspec.DecodeError as error:
        return (Problem(path="$", value=show_value(bytes(output)), rule=f"is not JSON: {error}"),)
    if not isinstance(document, dict):
        return (Problem(path="$", value=show_value(document), rule='must be {"steps": [...]}'),)
    for key, value in document.items():
        if key not in PLAN_FIELDS:
            problems.add(key, value, "unknown field (a plan holds only steps)")
    steps = document.get("steps")
    if isinstance(steps, list) and not steps:
        return tuple(problems.found)  # an empty plan: valid when nothing else is wrong
    _check_counts(state, planner_id, steps, problems)
    workflow = parse_document({"name": "plan", "steps": steps}, problems)
    if workflow is not None and isinstance(steps, list):
        for index, step in enumerate(workflow.steps):
            _check_step(state, planner_id, step, f"steps[{index}]", problems)
    if problems.found or workflow is None:
        assert problems.found, "a plan that does not parse has problems"
        return tuple(problems.found)
    return tuple(namespaced(step, planner_id) for step in workflow.steps)


def _check_counts(state: RunState, planner_id: str, steps: object, problems: Problems) -> None:
    if not isinstance(steps, list):
        return  # the parser names it
    config = config_of(state, planner_id)
    if len(steps) > config.max_steps:
        rule = f"holds {len(steps)} steps; this planner's max_steps is {config.max_steps}"
        problems.add_shown("steps", f"[... {len(steps)} steps]", rule)
    total = state.dynamic.steps_added + len(steps)
    if total > limits.dynamic_steps_per_run_max:
        rule = (
            f"would bring the run's dynamic steps to {total}; "
            f"the limit is {limits.dynamic_steps_per_run_max} (dynamic_steps_per_run_max)"
        )
        problems.add_shown("steps", f"[... {len(steps)} steps]", rule)


def _check_step(
    state: RunState, planner_id: str, step: StepDef, path: str, problems: Problems
) -> None:
    config = config_of(state, planner_id)
    if step.type not in config.allowed_types:
        allowed = ", ".join(config.allowed_types)
        problems.add(f"{path}.type", step.type, f"is not allowed in this plan (allowed: {allowed})")
    elif step.type == PLANNER and not nested_plan_allowed(state, planner_id):
        rule = "a planner here would nest plans deeper than max_depth allows"
        problems.add(f"{path}.type", step.type, rule)
    allowed_tasks = config.allowed_tasks
    if step.task and allowed_tasks is not None and step.task not in allowed_tasks:
        shown = ", ".join(allowed_tasks) or "none"
        problems.add(f"{path}.task", step.task, f"is not allowed in this plan (allowed: {shown})")
    full_id = f"{planner_id}.{step.id}"
    if len(full_id) > limits.step_id_length_max:
        rule = f"makes the namespaced id {len(full_id)} characters long; the limit is "
        problems.add(f"{path}.id", step.id, rule + str(limits.step_id_length_max))


def nested_plan_allowed(state: RunState, planner_id: str) -> bool:
    """Whether a planner inside `planner_id`'s plan could materialize a plan: its steps would be
    at depth d + 2, within every enclosing planner's max_depth and `plan_depth_max`."""
    depth = planner_id.count(".")
    nested_depth = depth + 2
    if nested_depth > limits.plan_depth_max:
        return False
    ancestor: str | None = planner_id
    while ancestor is not None:
        step_def = state.step_def(ancestor)
        assert step_def is not None
        if step_def.type == PLANNER:
            levels = nested_depth - ancestor.count(".")
            if levels > config_of(state, ancestor).max_depth:
                return False
        ancestor = appended.parent_id(ancestor)
    return True


def namespaced(step: StepDef, prefix: str) -> StepDef:
    """`step` with its id and every reference to a sibling prefixed `<prefix>.`."""

    def name(step_id: str) -> str:
        return f"{prefix}.{step_id}"

    skip_if = step.skip_if
    return replace(
        step,
        id=name(step.id),
        depends_on=tuple(name(dep) for dep in step.depends_on),
        skip_if=replace(skip_if, step_id=name(skip_if.step_id)) if skip_if else None,
        on_failure=name(step.on_failure) if step.on_failure else None,
        compensate=name(step.compensate) if step.compensate else None,
    )
