"""The `respond` step type: says what the HTTP request that started the run is answered with.

Config: `status` (100..599, default 200), `headers` (an object of string values, at most
`limits.respond_headers_max`), `body_from` (a dotted path into the step's input; left out:
the whole input is the body). No worker: the engine decides it alone. Respond is a side
effect, not a return: the step records `response.recorded` and completes with its input, and
the run goes on. Only a run's first `response.recorded` answers (the HTTP trigger reads it
from the run's history, `dagnats/api/triggers_routes.py`); a run no HTTP request started
records it all the same.

decide: an attempt schedules itself, records `response.recorded`, and completes with its
input; a `body_from` path the input does not hold fails the attempt (not retried: the same
input would fail again).
evolve: `response.recorded` changes no state (the record is the history itself).
react / resume: nothing.
"""

from __future__ import annotations

import re
from typing import Annotated, Final

import msgspec

from kernel import limits, registry
from kernel.commands import Rejection
from kernel.errors import Problem
from kernel.events import AnyEvent, ErrorInfo, ResponseRecorded, StepEvent
from kernel.outcome import StartAttempt, StepInput
from kernel.payloads import Missing, read_field
from kernel.state import RunState
from kernel.workflow import StepDef, WorkflowDef
from kernel.workflow.graph import dependents
from kernel.workflow.trigger_model import triggers_of
from steps.base import ConfiguredStepType, Draft, config_of, counted, schedule_attempt
from steps.config_read import config_document, unknown_fields

NAME: Final = "respond"
CONFIG_FIELDS: Final = ("status", "headers", "body_from")
HEADER_NAME: Final = re.compile(r"[A-Za-z0-9-]{1,64}")
BODY_PATH: Final = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*")
Status = Annotated[int, msgspec.Meta(ge=limits.respond_status_min, le=limits.respond_status_max)]


class RespondConfig(msgspec.Struct, frozen=True, kw_only=True):
    """What a respond step answers."""

    status: Status = 200
    headers: tuple[tuple[str, str], ...] = ()
    body_from: str = ""


def read_config(step: StepDef, path: str) -> RespondConfig | tuple[Problem, ...]:
    """The step's config, or every problem with it."""
    document = config_document(step)
    problems: list[Problem] = []
    unknown_fields(document, CONFIG_FIELDS, path, problems)
    status = document.get("status", 200)
    low, high = limits.respond_status_min, limits.respond_status_max
    if not isinstance(status, int) or isinstance(status, bool) or not low <= status <= high:
        rule = f"must be an HTTP status code from {low} to {high}"
        problems.append(Problem(path=f"{path}.config.status", value=repr(status)[:80], rule=rule))
    headers = _headers(document.get("headers", {}), f"{path}.config.headers", problems)
    body_from = document.get("body_from", "")
    if not isinstance(body_from, str) or (body_from and not BODY_PATH.fullmatch(body_from)):
        rule = "must be a dotted path into the step's input (a.b.c), or left out (all of it)"
        shown = repr(body_from)[:80]
        problems.append(Problem(path=f"{path}.config.body_from", value=shown, rule=rule))
    if problems:
        return tuple(problems)
    assert isinstance(status, int) and isinstance(body_from, str)
    return RespondConfig(status=status, headers=headers, body_from=body_from)


def _headers(value: object, path: str, problems: list[Problem]) -> tuple[tuple[str, str], ...]:
    rule = (
        f"must be an object of at most {limits.respond_headers_max} header names (A-Z a-z 0-9 -)"
        f" to string values of at most {limits.respond_header_bytes_max} bytes"
    )
    if not isinstance(value, dict) or len(value) > limits.respond_headers_max:
        problems.append(Problem(path=path, value=repr(value)[:80], rule=rule))
        return ()
    pairs: list[tuple[str, str]] = []
    for name, text in value.items():
        valid_name = isinstance(name, str) and HEADER_NAME.fullmatch(name) is not None
        valid_text = isinstance(text, str) and len(text.encode()) <= limits.respond_header_bytes_max
        if not valid_name or not valid_text or "\n" in str(text) or "\r" in str(text):
            problems.append(Problem(path=f"{path}.{name}", value=repr(text)[:80], rule=rule))
            continue
        pairs.append((str(name), str(text)))
    return tuple(sorted(pairs))


class RespondStep(ConfiguredStepType[RespondConfig]):
    """Record the HTTP answer of the run, then pass the input on."""

    config_type = RespondConfig
    config_fields = CONFIG_FIELDS
    read = staticmethod(read_config)
    name = NAME
    needs_task = False

    # decide
    def on(self, draft: Draft, step_id: str, given: StepInput) -> Rejection | None:
        if not isinstance(given, StartAttempt):
            return None  # (no worker, no timer, no signal: nothing else concerns it)
        config = config_of(draft.state, step_id, RespondConfig)
        draft.emit(schedule_attempt(draft.state, step_id, given.attempt, given.input, draft.at_ms))
        body = _body(given.input, config.body_from)
        if body is None:
            message = f"body_from {config.body_from!r}: the step's input holds no such field"
            draft.fail(step_id, ErrorInfo(message=message, kind="error"), retryable=False)
            return None
        draft.emit(
            ResponseRecorded(
                step_id=step_id,
                attempt=given.attempt,
                status=config.status,
                headers=config.headers,
                body=body,
                at_ms=draft.at_ms,
            )
        )
        draft.complete(step_id, given.input)
        return None

    # evolve
    def evolve(self, state: RunState, event: StepEvent) -> RunState:
        assert isinstance(event, ResponseRecorded), f"respond owns no {type(event).__name__}"
        assert state.step(event.step_id) is not None, f"no step {event.step_id!r}"
        return counted(state)


def _body(given: msgspec.Raw, body_from: str) -> msgspec.Raw | None:
    if not body_from:
        return given
    value = read_field(given, body_from)
    if isinstance(value, Missing):
        return None
    return msgspec.Raw(msgspec.json.encode(value))


def first_response(events: tuple[AnyEvent, ...]) -> ResponseRecorded | None:
    """The first `response.recorded` among `events` (the one that answers), or None."""
    for event in events:
        if isinstance(event, ResponseRecorded):
            return event
    return None


def respond_warnings(workflow: WorkflowDef) -> tuple[str, ...]:
    """Registration warnings of a workflow with an `http` trigger: no `respond` step (every
    request would time out), or two on one path of the DAG (only the first answers)."""
    if not any(trigger.http is not None for trigger in triggers_of(workflow)):
        return ()
    responders = [step.id for step in workflow.steps if step.type == NAME]
    if not responders:
        return (f"workflow {workflow.name!r} has an http trigger and no respond step: "
                "every request would wait for its timeout (504)",)  # fmt: skip
    users = dependents({step.id: step.depends_on for step in workflow.steps})
    found: list[str] = []
    for first in responders:
        later = _downstream(users, first)
        for second in responders:
            if second in later:
                found.append(
                    f"respond steps {first!r} and {second!r} are on one path: only the first "
                    "to run answers the request"
                )
    return tuple(found)


def _downstream(users: dict[str, tuple[str, ...]], start: str) -> frozenset[str]:
    """Every step after `start` on some path (iterative, bounded by the graph's size)."""
    seen: set[str] = set()
    stack = list(users.get(start, ()))
    while stack:
        node = stack.pop()
        if node not in seen:
            seen.add(node)
            stack.extend(users.get(node, ()))
    assert len(seen) <= len(users)
    return frozenset(seen)


RESPOND = registry.register(RespondStep())
