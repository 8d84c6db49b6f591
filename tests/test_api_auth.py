"""The HTTP API's bearer token against a real `dagnats serve`: with a token every request but
`/health` (and the static docs page) needs it; without one, serve refuses to bind beyond
loopback; a bad token or address is a usage error (exit 2) before anything starts.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from dagnats.api.auth import bearer_matches
from dagnats.api.checks import TOKEN_ENV, HttpAddressError, is_loopback, load_token, parse_address
from tests.api_support import ONE_STEP, Recorder, Stack, assert_problem, start_stack
from tests.fault_support import REPO_ROOT, dagnats_command

TOKEN = "s3cret-token-for-the-api-tests"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp: Path = tmp_path_factory.mktemp("api-auth")
    yield from start_stack(tmp, Recorder(), env={TOKEN_ENV: TOKEN}, worker=False)


def test_with_a_token_every_request_but_health_needs_it(stack: Stack) -> None:
    anonymous = stack.http
    assert anonymous.get("/health").status_code in (200, 503)  # no token needed
    assert anonymous.get("/docs").status_code == 200  # static files of the wheel
    for method, path in (
        ("GET", "/v1/workflows"), ("GET", "/openapi.json"), ("GET", "/ready"),
        ("POST", "/v1/runs"), ("GET", "/v1/runs/x"), ("POST", "/v1/query"),
        ("POST", "/v1/tasks/poll"), ("POST", "/v1/tasks/results"), ("GET", "/metrics"),
    ):  # fmt: skip
        body = assert_problem(anonymous.request(method, path), 401, detail_has="Bearer")
        assert body["type"].endswith("unauthorized")
    wrong = stack.client("not-the-token-at-all")
    response = wrong.get("/v1/workflows")
    assert_problem(response, 401, detail_has="wrong")
    assert response.headers["www-authenticate"].startswith("Bearer")
    basic = anonymous.get("/v1/workflows", headers={"Authorization": f"Basic {TOKEN}"})
    assert_problem(basic, 401)
    prefix = anonymous.get("/v1/workflows", headers={"Authorization": f"Bearer {TOKEN[:-1]}"})
    assert_problem(prefix, 401)
    good = stack.client(TOKEN)
    assert good.post("/v1/workflows", json=ONE_STEP).status_code == 201
    assert "api-one" in good.get("/v1/workflows").json()["workflows"]
    assert good.get("/openapi.json").status_code == 200
    taken = good.post("/v1/tasks/poll", json={"task_types": ["auth.none"], "timeout_ms": 0})
    assert taken.status_code == 200 and taken.json() == {"tasks": []}, taken.text
    for client in (wrong, good):
        client.close()


def serve_usage(
    tmp_path: Path, *args: str, token: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": str(REPO_ROOT)}
    if token is not None:
        env[TOKEN_ENV] = token
    return subprocess.run(
        [*dagnats_command(), "serve", "--data-dir", str(tmp_path / "d"), *args],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip


def test_beyond_loopback_without_a_token_is_refused_before_anything_starts(
    tmp_path: Path,
) -> None:
    for address in ("0.0.0.0:0", "[::]:0", "192.0.2.1:8080", "example.com:80"):
        done = serve_usage(tmp_path, "--http", address)
        assert done.returncode == 2, done
        assert "beyond loopback needs a bearer token" in done.stderr, done.stderr
        assert "--api-token-file" in done.stderr
    assert not (tmp_path / "d").exists()  # nothing started, nothing written
    short = serve_usage(tmp_path, "--http", "0.0.0.0:0", token="short")
    assert short.returncode == 2 and "must have 16..4096" in short.stderr, short.stderr
    assert "short" not in short.stderr.replace("must have", "")  # the token is never shown
    bad = serve_usage(tmp_path, "--http", "localhost:http")
    assert bad.returncode == 2 and "is not HOST:PORT" in bad.stderr, bad.stderr
    both = serve_usage(tmp_path, "--http", "127.0.0.1:0", "--no-http")
    assert both.returncode == 2 and "exclude each other" in both.stderr
    missing = serve_usage(tmp_path, "--api-token-file", str(tmp_path / "none"))
    assert missing.returncode == 2 and "--api-token-file" in missing.stderr


def test_token_and_address_rules(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\nignored\n")
    assert load_token(token_file, {}) == TOKEN
    assert load_token(None, {TOKEN_ENV: TOKEN}) == TOKEN
    assert load_token(None, {}) is None
    assert bearer_matches(f"Bearer {TOKEN}", TOKEN) and bearer_matches(f"bearer {TOKEN}", TOKEN)
    assert not bearer_matches(f"Bearer {TOKEN}x", TOKEN) and not bearer_matches("", TOKEN)
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.8.9.1", "::1", "[::1]", "localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "10.0.0.1", "example.com"))
    assert parse_address("127.0.0.1:0") == ("127.0.0.1", 0)
    assert parse_address("[::1]:8080") == ("::1", 8080)
    assert parse_address("9000") == ("127.0.0.1", 9000)
    for text in ("", "host:", ":80", "1.2.3.4:70000", "[::1]8080", "a:b"):
        with pytest.raises(HttpAddressError, match="is not HOST:PORT"):
            parse_address(text)
