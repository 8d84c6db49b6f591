"""The console's live model text and its operations pages in a real browser: headless
Chromium (the system package) driven by Playwright, against a real `dagnats serve`, a real
worker of tests/agent_workers.py and a real `agent_turn` worker (tests/fake_model_worker.py)
talking to the fake model server (`python -m dagnats.llm.fake`, its own process).

Each test opens a page the way a person would, does what the page offers, checks the
accessibility basics (tests/console_support.assert_accessible) and leaves a screenshot in
test-artifacts/console/.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import pytest

from tests.api_support import Recorder, Stack, start_stack
from tests.console_support import (
    assert_accessible,
    browser_wait_ms,
    launched_browser,
    opened_page,
    register,
    screenshot,
    start,
)
from tests.fault_support import dagnats_command
from tests.nats_fixtures import unique, wait_for_sync

playwright_sync = pytest.importorskip("playwright.sync_api")

run_wait_s: Final = 30.0
# streamed in pieces after a pause (the page subscribes meanwhile); HTML in it must stay text
ANSWER: Final = (
    'Streaming the plan: <img src=x onerror="window.__pwned = 3"> step one reads the brief, '
    "step two writes the code, step three runs the tests until they pass."
)
SCRIPT: Final = {"agents": [{"match": "", "replies": [
    {"text": ANSWER, "pieces": 30, "chunk_delay_ms": 120, "delay_ms": 1_500},
]}]}  # fmt: skip


def read_url(model: Any) -> str:
    """The fake model server's url, from the line it prints once it listens."""
    wait_for_sync(lambda: '"url"' in model.stdout(), timeout_ms=browser_wait_ms,
                  what="the fake model server's url")  # fmt: skip
    url: str = json.loads(model.stdout().splitlines()[0])["url"]
    return url


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("console-ops")
    script = tmp / "script.json"
    script.write_text(json.dumps(SCRIPT))
    for generator in [start_stack(tmp, Recorder(), worker=False)]:
        for found in generator:
            processes = found.processes
            model = processes.start(
                "fake-model", [sys.executable, "-m", "dagnats.llm.fake", "--script", str(script)]
            )
            url = read_url(model)
            processes.extra_env.update(
                FAKE_MODEL_URL=url, FAKE_MODEL_CALLS=str(tmp / "model-calls.jsonl"),
                FAKE_MODEL_GATE=str(tmp / "model-gate"),
            )  # fmt: skip
            for name, target in (("agent-worker", "tests.agent_workers:worker"),
                                 ("llm-worker", "tests.fake_model_worker:worker")):  # fmt: skip
                argv = [*dagnats_command(), "worker", target, "--nats-url", found.serve.url]
                processes.start(name, argv)
            found.wait_healthy()
            yield found


@pytest.fixture(scope="module")
def browser(stack: Stack) -> Iterator[Any]:
    """Started after the serve (Playwright's sync API runs an event loop in this thread)."""
    yield from launched_browser()


@pytest.fixture
def page(browser: Any, stack: Stack) -> Iterator[Any]:
    yield from opened_page(browser, stack)


def wait_run(stack: Stack, run_id: str, reached: Any) -> dict[str, Any]:
    found: dict[str, Any] = {}

    def done() -> bool:
        response = stack.http.get(f"/v1/runs/{run_id}")
        found.clear()
        found.update(response.json() if response.status_code == 200 else {})
        return bool(found) and bool(reached(found))

    wait_for_sync(done, timeout_ms=int(run_wait_s * 1000), what=f"run {run_id} to move on")
    return found


def test_an_agent_runs_model_text_streams_live_on_its_run_page(stack: Stack, page: Any) -> None:
    register(stack, {"name": "console-stream", "version": "1", "steps": [
        {"id": "plan", "type": "agent_loop", "task": "crash.turn", "config": {"max_turns": 2}},
    ]})  # fmt: skip
    run_id = start(stack, "console-stream", "plan the work")
    wait_run(stack, run_id, lambda run: run["status"] == "running")
    page.goto(f"/console/runs/{run_id}")
    panel = page.locator("#live-panel")
    assert panel.get_attribute("data-state") == "waiting"
    assert_accessible(page)
    page.locator('#live-panel[data-state="streaming"]').wait_for()
    assert (panel.get_attribute("data-step") or "").startswith("plan"), panel.get_attribute(
        "data-step"
    )
    screenshot(page, "run-live-model-text")
    page.locator('#live-panel[data-state="turn-ended"], #live-panel[data-state="ended"]').wait_for()
    shown = panel.locator(".live-text").inner_text()
    assert shown and ANSWER.endswith(shown), shown  # all of it, or what streamed once subscribed
    assert "<img" in shown and page.locator("main img").count() == 0
    assert page.evaluate("() => window.__pwned === undefined")
    page.locator('#run-status[data-status="completed"]').wait_for()
    page.locator('#live-panel[data-state="ended"]').wait_for()
    assert "completed" in panel.locator(".live-state").inner_text()
    assert page.locator('article.turn[data-turn="1"]').count() == 1
    screenshot(page, "run-live-model-text-ended")


def test_triggers_page_lists_fires_and_disables_a_trigger(stack: Stack, page: Any) -> None:
    path = f"/{unique('console-hook')}"
    answer = [{"id": "answer", "type": "respond", "config": {"status": 201, "body_from": "body"}}]
    register(
        stack,
        {
            "name": "console-hooked",
            "version": "1",
            "steps": answer,
            "triggers": [{"id": "api", "http": {"path": path, "method": "PUT"}}],
        },
    )
    fired = stack.http.put(f"/hooks{path}", json={"n": 1})
    assert fired.status_code == 201, fired.text
    run_id = fired.headers["x-run-id"]
    page.goto("/console/")
    page.get_by_role("link", name="Triggers").click()
    page.wait_for_url(re.compile("/console/triggers$"))
    article = page.locator('article.trigger[data-workflow="console-hooked"][data-trigger="api"]')
    assert article.get_attribute("data-enabled") == "yes"
    assert "http" in article.locator("h3").inner_text()
    fire = article.locator("tr.fire").first
    assert run_id in fire.inner_text() and "started" in fire.inner_text(), fire.inner_text()
    assert_accessible(page)
    screenshot(page, "triggers")
    article.get_by_role("button", name="Disable trigger api").click()
    page.locator(".notice").wait_for()
    assert "console-hooked/api disabled" in page.locator(".notice").inner_text()
    assert article.get_attribute("data-enabled") == "no"
    shown = stack.http.get("/v1/triggers/console-hooked/api").json()
    assert shown["enabled"] is False, shown
    article.get_by_role("button", name="Enable trigger api").click()
    page.locator(".notice").wait_for()
    assert article.get_attribute("data-enabled") == "yes"


def failing(name: str) -> dict[str, Any]:
    return {"name": name, "version": "1", "steps": [
        {"id": "boom", "task": "fault.work", "metadata": {"fail": "non_retryable"}}]}  # fmt: skip


def listed_letters(stack: Stack) -> list[tuple[str, str]]:
    letters = stack.http.get("/v1/dead-letters").json()["dead_letters"]
    return [(d["run_id"], d["step_id"]) for d in letters]


def test_dead_letters_are_listed_shown_discarded_and_retried(stack: Stack, page: Any) -> None:
    register(stack, failing("console-dlq"))
    discarded, retried = start(stack, "console-dlq"), start(stack, "console-dlq")
    for run_id in (discarded, retried):
        wait_run(stack, run_id, lambda run: run["status"] == "failed")
    wait_for_sync(lambda: {(discarded, "boom"), (retried, "boom")} <= set(listed_letters(stack)),
                  timeout_ms=browser_wait_ms, what="both dead letters listed")  # fmt: skip
    page.goto("/console/dead-letters")
    row = page.locator(f'tr.dead-letter[data-run="{discarded}"]')
    assert "non_retryable" in row.inner_text() or "boom" in row.inner_text(), row.inner_text()
    assert_accessible(page)
    screenshot(page, "dead-letters")
    row.get_by_role("link", name="boom").click()
    page.wait_for_url(re.compile(f"/dead-letters/{discarded}/boom$"))
    assert page.locator("#dead-letter-error").inner_text() != "—"
    assert_accessible(page)
    screenshot(page, "dead-letter")
    page.get_by_label(re.compile("^Reason for discarding")).fill("known bad input")
    page.get_by_role("button", name="Discard").click()
    page.locator(".notice").wait_for()
    assert f"{discarded} / boom discarded" in page.locator(".notice").inner_text()
    assert (discarded, "boom") not in listed_letters(stack)
    assert page.locator(f'tr.dead-letter[data-run="{discarded}"]').count() == 0
    before = stack.http.get(f"/v1/dead-letters/{retried}/boom").json()["attempt"]
    page.goto(f"/console/dead-letters/{retried}/boom")
    page.get_by_role("button", name="Retry from this step").click()
    page.locator(".notice").wait_for()
    assert f"{retried} / boom retried" in page.locator(".notice").inner_text()

    def tried_again() -> bool:
        found = stack.http.get(f"/v1/dead-letters/{retried}/boom")
        return found.status_code == 200 and found.json()["attempt"] > before

    wait_for_sync(tried_again, timeout_ms=int(run_wait_s * 1000), what="the step run again")


def test_workers_page_lists_the_running_workers(stack: Stack, page: Any) -> None:
    def both_listed() -> bool:
        workers = stack.http.get("/v1/workers").json()["workers"]
        types = {t for w in workers for t in w["task_types"]}
        return {"fault.work", "crash.turn"} <= types

    wait_for_sync(both_listed, timeout_ms=browser_wait_ms, what="both workers in the directory")
    page.goto("/console/")
    page.get_by_role("link", name="Workers").click()
    page.wait_for_url(re.compile("/console/workers$"))
    rows = page.locator("tr.worker")
    assert rows.count() >= 2
    text = page.locator("table.workers").inner_text()
    assert "fault.work" in text and "crash.turn" in text, text
    assert_accessible(page)
    screenshot(page, "workers")
    page.get_by_role("link", name="Show stale ones too").click()
    page.wait_for_url(re.compile("stale=1"))
    assert page.locator("tr.worker").count() >= 2


def test_screenshots_of_these_pages_go_where_the_others_do() -> None:
    assert Path(screenshot.__code__.co_filename).name == "console_support.py"
