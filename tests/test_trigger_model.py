"""The workflow format's `triggers`: reading, the rules (with the workflow's other problems),
the round trip through the user's document form, and the schema (kernel/workflow/trigger_*)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kernel.errors import WorkflowInvalidError
from kernel.workflow import parse_workflow, validate_workflow, workflow_to_document
from kernel.workflow.trigger_model import (
    CronSource,
    HttpSource,
    TriggerDef,
    WebhookSource,
    triggers_of,
)

STEPS = [{"id": "a", "task": "t"}]
SECRET = "s" * 16


def problems_of(triggers: list[object], **extra: object) -> list[tuple[str, str]]:
    document = {"name": "w", "steps": STEPS, "triggers": triggers, **extra}
    with pytest.raises(WorkflowInvalidError) as raised:
        parse_workflow(document)
    return [(problem.path, problem.rule) for problem in raised.value.problems]


def test_a_workflow_reads_every_kind_of_trigger() -> None:
    workflow = parse_workflow({
        "name": "w",
        "steps": STEPS,
        "triggers": [
            {"id": "nightly", "cron": {"expression": "0 2 * * *", "timezone": "Europe/Paris",
                                       "backfill": 3}},
            {"id": "orders", "subject": "orders.created", "debounce": {"period": "2s"}},
            {"id": "hook", "webhook": {"path": "/gh", "secret": SECRET}},
            {"id": "echo", "enabled": False,
             "http": {"path": "/echo", "method": "put", "timeout": "5s",
                      "idempotency_header": "Idempotency-Key"}},
        ],
    })  # fmt: skip
    cron, subject, hook, echo = triggers_of(workflow)
    assert cron.cron == CronSource(expression="0 2 * * *", timezone="Europe/Paris", backfill=3)
    assert subject.subject is not None and subject.subject.subject == "orders.created"
    assert subject.debounce is not None and subject.debounce.period_ms == 2_000
    assert hook.route() == ("POST", "/gh")
    assert echo.http is not None and echo.http.method == "PUT" and echo.http.timeout_ms == 5_000
    assert not echo.enabled and echo.kind == "http"
    assert parse_workflow(workflow_to_document(workflow)) == workflow


def test_a_workflow_without_triggers_encodes_as_before() -> None:
    import msgspec

    workflow = parse_workflow({"name": "w", "steps": STEPS})
    assert triggers_of(workflow) == ()
    assert b"triggers" not in msgspec.json.encode(workflow)


def test_trigger_problems_are_reported_with_the_workflows_other_problems() -> None:
    found = problems_of(
        [
            {"id": "c", "cron": {"expression": "0 */5 * * * *", "timezone": "Not A Zone"}},
            {"id": "h", "http": {"path": "echo", "secret": "short"}},
            {"id": "a", "http": {"path": "/x", "method": "POST"}},
            {"id": "b", "webhook": {"path": "/x"}},
            {"id": "two", "cron": {"expression": "* * * * *"}, "subject": "a.b"},
        ],
        version="",
    )
    paths = [path for path, _ in found]
    assert paths[0] == "version"  # the workflow's own problem, first, in the same report
    assert (
        "triggers[0].cron.expression" in paths
        and "has 6 fields" in dict(found)["triggers[0].cron.expression"]
    )
    assert "triggers[0].cron.timezone" in paths
    assert "must start with '/'" in dict(found)["triggers[1].http.path"]
    assert "16..256" in dict(found)["triggers[1].http.secret"]
    assert "conflicts with triggers[2]" in dict(found)["triggers[3].webhook.path"]
    assert "exactly one of" in dict(found)["triggers[4]"]


def test_the_secret_itself_is_never_shown_in_a_problem() -> None:
    secret = "too-short-secret"[:12]
    with pytest.raises(WorkflowInvalidError) as raised:
        trigger = {"id": "h", "webhook": {"path": "/h", "secret": secret}}
        parse_workflow({"name": "w", "steps": STEPS, "triggers": [trigger]})
    assert secret not in str(raised.value)


@pytest.mark.parametrize(
    ("trigger", "path"),
    [
        ({"id": "x", "cron": {"expression": "* * * * *", "backfill": 101}}, "cron.backfill"),
        ({"id": "x", "subject": "dagnats.cmd.>"}, "subject.subject"),
        ({"id": "x", "subject": "a.>.b"}, "subject.subject"),
        ({"id": "x", "http": {"path": "/a", "max_body_bytes": 0}}, "http.max_body_bytes"),
        ({"id": "x", "http": {"path": "/a", "method": "TRACE"}}, "http.method"),
        ({"id": "x", "http": {"path": "/a"}, "debounce": {"period": "1s"}}, "debounce"),
        ({"id": "x", "subject": "a", "debounce": {"period": "5s", "timeout": "1s"}},
         "debounce.timeout"),
        ({"id": "x y", "subject": "a"}, "id"),
        ({"id": "x", "subject": "a", "extra": 1}, "extra"),
    ],
)  # fmt: skip
def test_each_rule_names_its_field(trigger: dict[str, object], path: str) -> None:
    assert f"triggers[0].{path}" in [found for found, _ in problems_of([trigger])]


def test_duplicate_ids_are_a_problem() -> None:
    found = problems_of([{"id": "x", "subject": "a"}, {"id": "x", "subject": "b"}])
    assert found == [("triggers[1].id", "is used by an earlier trigger: ids are unique")]


def test_a_typed_value_gets_the_same_rules() -> None:
    workflow = parse_workflow({"name": "w", "steps": STEPS})
    from msgspec.structs import replace

    bad = replace(workflow, triggers=(TriggerDef(id="h", http=HttpSource(path="nope")),))
    assert [problem.path for problem in validate_workflow(bad)] == ["triggers[0].http.path"]


paths = st.from_regex(r"/[a-z0-9_-]{0,12}", fullmatch=True)


@given(st.lists(paths, min_size=1, max_size=5, unique=True), st.booleans())
def test_distinct_routes_round_trip(routes: list[str], signed: bool) -> None:
    triggers = tuple(
        TriggerDef(id=f"t{i}", webhook=WebhookSource(path=route, secret=SECRET if signed else ""))
        for i, route in enumerate(routes)
    )
    workflow = parse_workflow({"name": "w", "steps": STEPS})
    from msgspec.structs import replace

    typed = replace(workflow, triggers=triggers)
    assert validate_workflow(typed) == ()
    assert parse_workflow(workflow_to_document(typed)) == typed
