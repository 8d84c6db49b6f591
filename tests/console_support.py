"""Helpers of the console's browser tests (tests/test_console_browser.py): the system Chromium
driven by Playwright, a real `dagnats serve` with a worker of tests/agent_workers.py, the
accessibility checks every page passes, and the screenshots kept under `test-artifacts/console/`.

Without Chromium the browser tests skip, except under `CI=true`, where they fail (the project's
CI script installs it: `.ci/run`). Processes are started and killed by pid through
tests.fault_support.Processes.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import pytest

from tests.api_support import Stack
from tests.fault_support import REPO_ROOT

ARTIFACTS: Final = REPO_ROOT / "test-artifacts" / "console"
CHROMIUM_PATHS: Final = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
browser_wait_ms: Final = 20_000


def chromium_path() -> str:
    """The system Chromium; skips without it, fails without it under CI=true."""
    for candidate in CHROMIUM_PATHS:
        if Path(candidate).exists():
            return candidate
    found = shutil.which("chromium")
    if found:
        return found
    message = "no chromium here (apt-get install -y chromium; .ci/run does it)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


def launched_browser() -> Iterator[Any]:
    """Headless system Chromium under Playwright's sync API, closed after (a module fixture's
    body: start it after the serves, since the sync API runs an event loop in this thread)."""
    playwright_sync = pytest.importorskip("playwright.sync_api")
    executable = chromium_path()
    with playwright_sync.sync_playwright() as driver:
        launched = driver.chromium.launch(executable_path=executable, headless=True)
        yield launched
        launched.close()


def opened_page(browser: Any, stack: Stack) -> Iterator[Any]:
    """A fresh page on `stack`'s console (a test fixture's body); fails the test if the page
    raised a script error or opened a dialog."""
    context = browser.new_context(base_url=stack.base, viewport={"width": 1280, "height": 900})
    opened = context.new_page()
    opened.set_default_timeout(browser_wait_ms)
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    opened.on("dialog", lambda dialog: errors.append(f"a dialog opened: {dialog.message}"))
    yield opened
    context.close()
    assert errors == [], errors


def register(stack: Stack, document: dict[str, Any]) -> None:
    response = stack.http.post("/v1/workflows", content=json.dumps(document))
    assert response.status_code == 201, response.text


def start(stack: Stack, workflow: str, value: Any = None) -> str:
    response = stack.http.post("/v1/runs", json={"workflow": workflow, "input": value})
    assert response.status_code == 201, response.text
    run_id: str = response.json()["run_id"]
    return run_id


def screenshot(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


ACCESSIBILITY_PROBE: Final = """() => {
  const problems = [];
  if (!document.title.trim()) problems.push('the page has no title');
  if (document.querySelectorAll('h1').length !== 1) problems.push('the page has no single h1');
  for (const el of document.querySelectorAll('input:not([type=hidden]), select, textarea')) {
    const named = (el.labels && el.labels.length > 0) || el.getAttribute('aria-label');
    if (!named) problems.push('a ' + el.tagName + ' named ' + el.name + ' has no label');
  }
  for (const el of document.querySelectorAll('button')) {
    const text = el.textContent.trim() || el.getAttribute('aria-label');
    if (!text) problems.push('a button has no text');
  }
  for (const el of document.querySelectorAll('.badge')) {
    if (!/[a-z]/.test(el.textContent)) problems.push('a status badge shows no word');
  }
  for (const el of document.querySelectorAll('svg.dag .node')) {
    const label = el.querySelector('.step-status');
    const worded = label && /[a-z]/.test(label.textContent);
    if (!worded) problems.push('a DAG node shows no status word');
  }
  return problems;
}"""


def assert_accessible(page: Any) -> None:
    """Title, one h1, a label for every form control, status words beside the colours."""
    problems = page.evaluate(ACCESSIBILITY_PROBE)
    assert problems == [], (page.url, problems)
