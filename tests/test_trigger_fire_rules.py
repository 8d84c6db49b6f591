"""Fire requests without a server process doing the firing: the client role's permission for
the request subject (and nobody's below it), when a debounced burst starts, and the bounded,
readable refusal when no engine answers (a bare nats-server: no engine runs there)."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st
from nats.js.client import JetStreamContext

from dagnats.runtime.roles import permissions
from dagnats.runtime.triggers_plan import burst_due, new_burst
from dagnats.runtime.triggers_requests import (
    FireUnansweredError,
    ensure_request_stream,
    request_fire,
    request_subject,
)
from kernel.workflow.trigger_model import Debounce


def matches(rule: str, subject: str) -> bool:
    """Whether a NATS subject rule (`*`, `>`) covers `subject`."""
    parts, tokens = rule.split("."), subject.split(".")
    for index, part in enumerate(parts):
        if part == ">":
            return len(tokens) > index
        if index >= len(tokens) or part not in ("*", tokens[index]):
            return False
    return len(parts) == len(tokens)


def test_the_client_may_publish_a_fire_request_and_a_worker_may_not() -> None:
    subject = request_subject("billing", "nightly")
    for role, user in (("client", "client"), ("approver", "approver-ann")):
        rules = permissions(role, user, "ann").publish_allow  # type: ignore[arg-type]
        assert any(matches(rule, subject) for rule in rules), role
        assert not any(matches(rule, subject + ".more") for rule in rules), role
    worker = permissions("worker", "worker").publish_allow
    assert not any(matches(rule, subject) for rule in worker)
    scoped = permissions("worker", "worker-a", task_types=("email",)).publish_allow
    assert not any(matches(rule, subject) for rule in scoped)


@given(
    period=st.integers(1, 10**7), timeout=st.integers(0, 10**7),
    first=st.integers(0, 10**9), later=st.integers(0, 10**7),
)  # fmt: skip
def test_a_burst_starts_exactly_at_its_starts_by(
    period: int, timeout: int, first: int, later: int
) -> None:
    from dagnats.runtime.triggers_requests import burst_starts_by

    rule = Debounce(period_ms=period, timeout_ms=timeout)
    burst = new_burst("t", "", "f", {}, first)
    burst = msgspec.structs.replace(burst, last_ms=first + later)
    at = burst_starts_by(rule, burst)
    assert burst_due(rule, burst, at)
    assert not burst_due(rule, burst, at - 1)


async def test_no_engine_answers_within_the_bound(private_js: JetStreamContext) -> None:
    with pytest.raises(FireUnansweredError, match="not stored") as refused:
        await request_fire(private_js, "wf", "t", timeout_s=1.0)
    assert refused.value.hint and "dagnats serve" in refused.value.hint
    await ensure_request_stream(private_js)
    with pytest.raises(FireUnansweredError, match="stored and fires if an engine reads it"):
        await request_fire(private_js, "wf", "t", timeout_s=1.0)
