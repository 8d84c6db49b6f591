"""Webhooks behind the API's bearer token, against a real `dagnats serve` with a token: a
`/hooks` request without the token is served by a trigger with a secret when its HMAC
signature is right (GitHub-style senders send no bearer token), refused (401) when it is wrong
or missing, and refused (401) by a trigger without a secret unless the token comes; the
exemption covers `/hooks/...` only."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Final

import pytest

from dagnats.api.checks import TOKEN_ENV
from dagnats.api.triggers_routes import signature_of
from tests.api_support import Recorder, Stack, assert_problem, start_stack
from tests.nats_fixtures import wait_for_sync

TOKEN: Final = "s3cret-token-for-the-trigger-tests"
SECRET: Final = "a-webhook-secret-of-some-length"
NAP: Final = [{"id": "nap", "type": "sleep", "config": {"duration": "1ms"}}]
WORKFLOWS: Final = [
    {"name": "auth-signed", "steps": NAP,
     "triggers": [{"id": "gh", "webhook": {"path": "/signed", "secret": SECRET}}]},
    {"name": "auth-open", "steps": NAP, "triggers": [{"id": "open", "webhook": {"path": "/open"}}]},
]  # fmt: skip


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp: Path = tmp_path_factory.mktemp("trigger-auth")
    for running in start_stack(tmp, Recorder(), env={TOKEN_ENV: TOKEN}, worker=False):
        with running.client(TOKEN) as admin:
            for workflow in WORKFLOWS:
                response = admin.post("/v1/workflows", json=workflow)
                assert response.status_code == 201, response.text
        yield running


def completed(stack: Stack, run_id: str) -> None:
    with stack.client(TOKEN) as admin:

        def done() -> bool:
            return bool(admin.get(f"/v1/runs/{run_id}").json().get("status") == "completed")

        wait_for_sync(done, timeout_ms=30_000, what=f"run {run_id} to complete")


def test_a_signed_webhook_needs_no_bearer_token(stack: Stack) -> None:
    body = b'{"ref": "refs/heads/main"}'
    signed = stack.http.post(
        "/hooks/signed", content=body, headers={"X-Dagnats-Signature": signature_of(body, SECRET)}
    )
    assert signed.status_code == 202, signed.text
    completed(stack, signed.json()["run_id"])


def test_a_wrong_or_missing_signature_is_refused_with_or_without_the_token(stack: Stack) -> None:
    body = b'{"ref": "x"}'
    wrong = {"X-Dagnats-Signature": signature_of(b"other", SECRET)}
    assert_problem(stack.http.post("/hooks/signed", content=body, headers=wrong), 401,
                   detail_has="wrong", field="header.X-Dagnats-Signature")  # fmt: skip
    assert_problem(stack.http.post("/hooks/signed", content=body), 401, detail_has="missing")
    with stack.client(TOKEN) as admin:  # the token does not stand in for the signature
        assert_problem(admin.post("/hooks/signed", content=body), 401, detail_has="missing")


def test_a_trigger_without_a_secret_needs_the_token(stack: Stack) -> None:
    refused = stack.http.post("/hooks/open", json={"a": 1})
    body = assert_problem(refused, 401, detail_has="has no secret")
    assert body["type"].endswith("unauthorized")
    assert refused.headers["www-authenticate"].startswith("Bearer")
    with stack.client(TOKEN) as admin:
        accepted = admin.post("/hooks/open", json={"a": 1})
        assert accepted.status_code == 202, accepted.text
    completed(stack, accepted.json()["run_id"])


def test_the_exemption_is_only_for_hooks(stack: Stack) -> None:
    for method, path in (("GET", "/v1/triggers"), ("POST", "/v1/runs"), ("GET", "/v1/workflows")):
        assert_problem(stack.http.request(method, path), 401, detail_has="Bearer")
