"""The web console in a real browser: headless Chromium (the system package) driven by
Playwright, against a real `dagnats serve` (HTTP on a free loopback port) and a real worker
process (tests/agent_workers.py: the fault handlers plus a scripted agent and its tools).

Each test opens pages the way a person would, checks the accessibility basics
(tests/console_support.assert_accessible) and leaves a screenshot in test-artifacts/console/.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import httpx
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
XSS: Final = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">'


def gated(name: str, gate: str) -> dict[str, Any]:
    return {
        "name": name, "version": "1",
        "steps": [
            {"id": "prepare", "task": "fault.work"},
            {"id": "slow", "task": "fault.work", "depends_on": ["prepare"],
             "metadata": {"gate": gate}},
            {"id": "finish", "task": "fault.work", "depends_on": ["slow"]},
        ],
    }  # fmt: skip


def approval_flow(name: str, question: str) -> dict[str, Any]:
    return {
        "name": name, "version": "1",
        "steps": [
            {"id": "gate", "type": "approval", "metadata": {"ticket": "T-1", "note": XSS},
             "config": {"question": question, "description": f"Check {XSS} first"}},
            {"id": "ship", "task": "fault.work", "depends_on": ["gate"]},
        ],
    }  # fmt: skip


def agent_flow(name: str) -> dict[str, Any]:
    return {
        "name": name, "version": "1",
        "steps": [
            {"id": "research", "type": "agent_loop", "task": "agent.turn",
             "config": {"max_turns": 6, "tools": {
                 "search": "agent.search", "calc": "agent.calc", "slow": "agent.slow"}}},
            {"id": "report", "task": "fault.work", "depends_on": ["research"]},
        ],
    }  # fmt: skip


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("console")
    for generator in [start_stack(tmp, Recorder(), worker=False)]:
        for found in generator:
            processes = found.processes
            for gate in ("turn3", "slow"):  # the agent script runs straight through
                processes.open_gate(gate)
            processes.start("agent-worker", [
                *dagnats_command(), "worker", "tests.agent_workers:worker",
                "--nats-url", found.serve.url,
            ])  # fmt: skip
            found.wait_healthy()
            yield found


@pytest.fixture(scope="module")
def browser(stack: Stack, token_stack: tuple[Stack, str]) -> Iterator[Any]:
    """The browser, started after both serves (Playwright's sync API runs an event loop in
    this thread, so the processes' own asyncio.run must come first)."""
    yield from launched_browser()


@pytest.fixture
def page(browser: Any, stack: Stack) -> Iterator[Any]:
    yield from opened_page(browser, stack)


def wait_status(stack: Stack, run_id: str, status: str) -> dict[str, Any]:
    found: dict[str, Any] = {}

    def reached() -> bool:
        found.update(stack.http.get(f"/v1/runs/{run_id}").json())
        return found.get("status") == status

    wait_for_sync(reached, timeout_ms=int(run_wait_s * 1000), what=f"run {run_id} {status}")
    return found


def wait_listed(stack: Stack, run_id: str) -> None:
    """The query tables (which the runs page and dashboard read) hold the run."""

    def listed() -> bool:
        rows = stack.http.get("/v1/runs", params={"limit": 1000}).json()["runs"]
        return any(row["run_id"] == run_id for row in rows)

    wait_for_sync(listed, timeout_ms=browser_wait_ms, what=f"run {run_id} in the query tables")


def test_dashboard_shows_counts_and_pending_approvals(stack: Stack, page: Any) -> None:
    register(stack, approval_flow("console-dash", "Dashboard question?"))
    run_id = start(stack, "console-dash")
    wait_listed(stack, run_id)
    page.goto("/")
    assert page.url.endswith("/console/"), page.url
    assert page.title() == "Dashboard · DagNats console"
    running = page.locator('.count[data-status="running"]')
    assert int(running.inner_text()) >= 1
    pending = page.locator("#pending-heading")
    assert re.search(r"Pending approvals \(\d+\)", pending.inner_text())
    assert page.get_by_role("link", name=run_id).count() >= 1
    assert page.locator("table.rate tbody tr").count() >= 1
    assert_accessible(page)
    screenshot(page, "dashboard")


def test_a_run_is_followed_live_to_completion(stack: Stack, page: Any) -> None:
    gate = unique("live")
    register(stack, gated("console-live", gate))
    run_id = start(stack, "console-live")

    def slow_started() -> bool:
        return bool(stack.processes.calls_of(run_id, "slow"))

    wait_for_sync(slow_started, timeout_ms=browser_wait_ms, what="step slow's handler called")
    page.goto(f"/console/runs/{run_id}")
    assert page.locator("#run-status").get_attribute("data-status") == "running"
    slow_node = page.locator('svg.dag .node[data-step="slow"] .step-status')
    assert re.search("running|scheduled", slow_node.text_content()), slow_node.text_content()
    assert "pending" in page.locator('svg.dag .node[data-step="finish"]').text_content()
    assert_accessible(page)
    screenshot(page, "run-live-running")
    stack.processes.open_gate(gate)  # the step ends; the page learns it over SSE
    page.locator('#run-status[data-status="completed"]').wait_for()
    assert (
        "completed" in page.locator('svg.dag .node[data-step="finish"] .step-status').text_content()
    )
    assert (
        page.locator('tr[data-step="finish"] .step-status-cell')
        .inner_text()
        .strip()
        .endswith("completed")
    )
    assert page.locator(".timeline li").count() >= 4
    assert_accessible(page)
    screenshot(page, "run-completed")


def decide_in_inbox(page: Any, run_id: str, decision: str, comment: str, data: str) -> None:
    page.goto("/console/approvals")
    article = page.locator(f'article.approval[data-run="{run_id}"]')
    article.wait_for()
    article.get_by_label("Approver").select_option(index=1)
    article.get_by_label("Comment").fill(comment)
    article.get_by_label(re.compile("^Data")).fill(data)
    assert_accessible(page)
    screenshot(page, f"approvals-before-{decision}")
    article.get_by_role("button", name=decision.capitalize()).click()
    page.locator(".notice").wait_for()
    assert run_id in page.locator(".notice").inner_text()


def decided_run(
    stack: Stack, page: Any, workflow: str, question: str, decision: str, comment: str,
    data: str, ends: str,
) -> tuple[str, dict[str, Any]]:  # fmt: skip
    """A run of an approval flow decided in the inbox, once it `ends` with that status."""
    register(stack, approval_flow(workflow, question))
    run_id = start(stack, workflow)
    wait_status(stack, run_id, "running")
    decide_in_inbox(page, run_id, decision, comment, data)
    run = wait_status(stack, run_id, ends)
    approval = run["approvals"][0]
    assert (approval["decision"], approval["comment"]) == (decision, comment), approval
    return run_id, run


def test_approve_from_the_inbox_and_the_run_goes_on(stack: Stack, page: Any) -> None:
    run_id, run = decided_run(
        stack, page, "console-approve", "Ship release 7?", "approve", "looks good",
        '{"approved_version": 7}', "completed",
    )  # fmt: skip
    assert run["approvals"][0]["by"], run["approvals"]
    page.goto(f"/console/runs/{run_id}")
    assert page.locator("#run-status").get_attribute("data-status") == "completed"
    assert page.locator(f'article.approval[data-run="{run_id}"]').count() == 0
    screenshot(page, "run-after-approval")


def test_reject_with_a_comment(stack: Stack, page: Any) -> None:
    _, run = decided_run(
        stack, page, "console-reject", "Delete the database?", "reject", "absolutely not", "",
        "failed",
    )  # fmt: skip
    steps = {s["step_id"]: s["status"] for s in run["steps"]}
    assert steps["ship"] != "completed", steps


def test_filter_runs_by_status_workflow_and_id(stack: Stack, page: Any) -> None:
    failing = {"name": "console-fail", "version": "1", "steps": [
        {"id": "boom", "task": "fault.work", "metadata": {"fail": "non_retryable"}}]}  # fmt: skip
    register(stack, failing)
    register(stack, {"name": "console-ok", "version": "1",
                     "steps": [{"id": "fine", "task": "fault.work"}]})  # fmt: skip
    failed_id, ok_id = start(stack, "console-fail"), start(stack, "console-ok")
    wait_status(stack, failed_id, "failed")
    wait_status(stack, ok_id, "completed")
    wait_listed(stack, failed_id)
    wait_listed(stack, ok_id)
    page.goto("/console/runs")
    page.get_by_label("Status").select_option("failed")
    page.get_by_label("Workflow").select_option("console-fail")
    page.get_by_role("button", name="Filter").click()
    page.wait_for_url(re.compile("status=failed"))
    rows = page.locator("tr.run-row")
    assert rows.count() >= 1
    assert set(rows.evaluate_all("rows => rows.map(r => r.dataset.run)")) == {failed_id}
    assert_accessible(page)
    screenshot(page, "runs-filtered")
    page.goto("/console/runs")
    page.get_by_label("Failed step").fill("boom")
    page.get_by_role("button", name="Filter").click()
    page.wait_for_url(re.compile("failed_step=boom"))
    assert failed_id in page.locator("tr.run-row").evaluate_all(
        "rows => rows.map(r => r.dataset.run)")  # fmt: skip
    page.get_by_label("Run id").fill(ok_id[:10])
    page.get_by_label("Failed step").fill("")
    page.get_by_role("button", name="Filter").click()
    page.wait_for_url(re.compile("q="))
    ids = page.locator("tr.run-row").evaluate_all("rows => rows.map(r => r.dataset.run)")
    assert ids == [ok_id], ids


def test_an_agent_run_shows_each_turn_with_its_tool_calls(stack: Stack, page: Any) -> None:
    register(stack, agent_flow("console-agent"))
    run_id = start(stack, "console-agent", {"topic": "durable agents"})
    wait_status(stack, run_id, "completed")
    page.goto(f"/console/runs/{run_id}")
    turns = page.locator("article.turn")
    assert turns.count() == 4
    first = page.locator('article.turn[data-turn="1"]')
    calls = first.locator("tr.tool-call")
    assert calls.count() == 2
    search = calls.nth(0).inner_text()
    assert "search" in search and '"q": "durable agents"' in search and "hits" in search, search
    assert "100 tokens in" in first.inner_text() and "cost 0.01" in first.inner_text()
    failed = page.locator('article.turn[data-turn="2"] tr.tool-call').inner_text()
    assert "error" in failed and "no results" in failed, failed
    assert_accessible(page)
    screenshot(page, "agent-run")


def test_html_in_user_data_is_shown_never_run(stack: Stack, page: Any) -> None:
    register(stack, approval_flow("console-xss", f"Approve {XSS}?"))
    run_id = start(stack, "console-xss", {"topic": XSS})
    wait_status(stack, run_id, "running")
    page.goto("/console/approvals")
    article = page.locator(f'article.approval[data-run="{run_id}"]')
    assert XSS in article.locator("h2").inner_text()
    decide_in_inbox(page, run_id, "approve", XSS, json.dumps({"html": XSS}))
    wait_status(stack, run_id, "completed")
    agent = agent_flow("console-xss-agent")
    register(stack, agent)
    agent_run = start(stack, "console-xss-agent", {"topic": XSS})
    wait_status(stack, agent_run, "completed")
    for path in (f"/console/runs/{run_id}", f"/console/runs/{agent_run}", "/console/runs",
                 "/console/", "/console/workflows/console-xss"):  # fmt: skip
        page.goto(path)
        page.locator("h1").wait_for()
        assert page.evaluate("() => window.__pwned === undefined"), path
        assert page.locator("main img").count() == 0, path
    page.goto(f"/console/runs/{agent_run}")
    shown = page.locator('article.turn[data-turn="1"] tr.tool-call').nth(0).inner_text()
    assert "<script>window.__pwned = 1</script>" in shown, shown
    screenshot(page, "xss-escaped")


def test_forms_need_the_csrf_token_and_the_same_origin(stack: Stack) -> None:
    register(stack, approval_flow("console-csrf", "CSRF?"))
    run_id = start(stack, "console-csrf")
    wait_status(stack, run_id, "running")
    with httpx.Client(base_url=stack.base, timeout=10) as client:
        html = client.get("/console/approvals").text
        cookie = client.cookies.get("dagnats_csrf") or ""
        found = re.search(r'name="csrf" value="([^"]+)"', html)
        assert found and cookie, "a page sets the CSRF cookie and puts the token in its forms"
        token = found.group(1)
        target = f"/console/approvals/{run_id}/gate"
        client.cookies.set("dagnats_csrf", cookie)
        bare = {"decision": "approve"}
        assert client.post(target, data=bare).status_code == 403
        wrong = {**bare, "csrf": token[:-2] + "xx"}
        assert client.post(target, data=wrong).status_code == 403
        other_site = client.post(target, data={**bare, "csrf": token},
                                 headers={"Origin": "http://evil.example"})  # fmt: skip
        assert other_site.status_code == 403
        rebinding = client.get("/console/", headers={"Host": "evil.example"})
        assert rebinding.status_code == 403
    run = stack.http.get(f"/v1/runs/{run_id}").json()
    assert run["approvals"][0]["decision"] == "", "no refused form decided anything"


@pytest.fixture(scope="module")
def token_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, str]]:
    tmp = tmp_path_factory.mktemp("console-token")
    token = "console-test-token-0123456789abcdef"
    token_file = tmp / "token"
    token_file.write_text(token + "\n")
    extra = ("--api-token-file", str(token_file))
    for generator in [start_stack(tmp, Recorder(), worker=False, extra_args=extra)]:
        for found in generator:
            yield found, token


def test_with_a_token_the_console_needs_a_login(
    browser: Any, token_stack: tuple[Stack, str]
) -> None:
    stack, token = token_stack
    context = browser.new_context(base_url=stack.base)
    page = context.new_page()
    page.set_default_timeout(browser_wait_ms)
    page.goto("/console/runs")
    assert "/console/login" in page.url
    assert_accessible(page)
    screenshot(page, "login")
    page.get_by_label(re.compile("^Your name")).fill("ada")
    page.get_by_label("API token").fill("not-the-token-at-all-123456")
    page.get_by_role("button", name="Log in").click()
    page.locator(".error").wait_for()
    assert "/console/login" in page.url
    page.get_by_label(re.compile("^Your name")).fill("ada")
    page.get_by_label("API token").fill(token)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(re.compile("/console/runs$"))
    assert "ada" in page.locator(".who").inner_text()
    session = [c for c in context.cookies() if c["name"] == "dagnats_session"]
    assert len(session) == 1 and session[0]["httpOnly"] and session[0]["secure"], session
    assert session[0]["sameSite"] == "Strict", session
    context.close()
    value = session[0]["value"]
    for cookie, expected in ((None, 303), (value[:-3] + "abc", 303), (value, 200)):
        with httpx.Client(base_url=stack.base, timeout=10) as client:
            if cookie is not None:
                client.cookies.set("dagnats_session", cookie)
            assert client.get("/console/runs").status_code == expected, cookie
            assert client.get("/v1/runs").status_code == 401  # the API still wants its bearer


def test_screenshots_folder_is_ignored_by_git() -> None:
    ignored = (Path(__file__).resolve().parent.parent / ".gitignore").read_text().splitlines()
    assert "test-artifacts/" in ignored
