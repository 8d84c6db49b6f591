"""The `continue_as_new` step type: ends the run and starts a fresh one; no worker.

Config: `workflow` (a registered workflow's name; default: this run's workflow) and
`input_from` (a step id among `depends_on` whose output is the new run's input; default: the
step's own resolved input). The run ends as `continued_as_new` (`run.continued_as_new`), the
step completed with `{"continued_as": <new run id>}`; the new run records `continued_from` and
the chain's root. A chain longer than `limits.continue_as_new_chain_max` fails the step.

decide: start schedules the attempt and continues the run as new (steps/continuation.py).
evolve / react / resume: the run's (kernel.run_links starts the new run; nothing of its own).
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from kernel import limits, registry
from kernel.commands import Rejection
from kernel.errors import Problem
from kernel.events import ErrorInfo
from kernel.outcome import StartAttempt, StepInput
from kernel.workflow import StepDef
from steps import continuation
from steps.base import ConfiguredStepType, Draft, config_of, schedule_attempt
from steps.config_read import config_document, unknown_fields

CONFIG_FIELDS = ("workflow", "input_from")


class ContinueConfig(msgspec.Struct, frozen=True, kw_only=True):
    workflow: Annotated[str, msgspec.Meta(max_length=limits.workflow_name_length_max)] = ""
    input_from: str = ""


def read_config(step: StepDef, path: str) -> ContinueConfig | tuple[Problem, ...]:
    """The step's config, or every problem with it."""
    document = config_document(step)
    problems: list[Problem] = []
    unknown_fields(document, CONFIG_FIELDS, path, problems)
    workflow = document.get("workflow", "")
    bound = limits.workflow_name_length_max
    if not isinstance(workflow, str) or len(workflow) > bound:
        rule = f"must be the name of a registered workflow (1..{bound} characters)"
        problems.append(Problem(path=f"{path}.config.workflow", value=repr(workflow), rule=rule))
    input_from = document.get("input_from", "")
    if not isinstance(input_from, str) or (input_from and input_from not in step.depends_on):
        known = ", ".join(step.depends_on) or "none"
        rule = f"must name one of this step's depends_on ({known})"
        problems.append(
            Problem(path=f"{path}.config.input_from", value=repr(input_from), rule=rule)
        )
    if problems:
        return tuple(problems)
    assert isinstance(workflow, str) and isinstance(input_from, str)
    return ContinueConfig(workflow=workflow, input_from=input_from)


class ContinueAsNewStep(ConfiguredStepType[ContinueConfig]):
    """End this run and carry on in a fresh run with a step's output as its input."""

    config_type = ContinueConfig
    config_fields = CONFIG_FIELDS
    read = staticmethod(read_config)
    name = "continue_as_new"
    needs_task = False

    # decide
    def on(self, draft: Draft, step_id: str, given: StepInput) -> Rejection | None:
        if not isinstance(given, StartAttempt):
            return None
        state = draft.state
        config = config_of(state, step_id, ContinueConfig)
        draft.emit(schedule_attempt(state, step_id, given.attempt, given.input, draft.at_ms))
        carried = given.input
        if config.input_from:
            source = state.step(config.input_from)
            assert source is not None, "input_from is among depends_on"
            carried = source.output
        problem = continuation.continue_as_new(draft, step_id, carried, config.workflow)
        if problem is not None:
            draft.fail(step_id, ErrorInfo(message=problem, kind="non_retryable"), retryable=False)
        return None


CONTINUE_AS_NEW = registry.register(ContinueAsNewStep())
