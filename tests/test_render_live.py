"""The live run view shows what an agent loop and an approval step are doing now."""

from __future__ import annotations

from rich.console import Console

from dagnats.cli.render import run_table
from tests.kernel_dsl import complete, given, start
from tests.test_steps_agent_loop import agent, go_on
from tests.test_steps_approval import GATED


def rendered(state: object) -> str:
    console = Console(width=200, record=True)
    console.print(run_table(state))  # type: ignore[arg-type]
    return console.export_text()


def test_an_agent_loop_shows_its_turn_tools_and_usage() -> None:
    wf = agent()
    state = given(
        start(wf, {"goal": "x"}),
        complete("a.turn1", go_on({"n": 1}, ("search", {"q": "a"}), usage=10, cost=0.25)),
    ).state
    text = rendered(state)
    assert "turn 1 (tools)" in text and "1 tool call(s)" in text, text
    assert "search:scheduled" in text and "20 tokens, cost 0.25" in text, text
    before = rendered(given(start(wf, {"goal": "x"})).state)
    assert "search:" not in before and "turn 1 (turn)" in before, before


def test_a_pending_approval_shows_its_question_until_it_is_resolved() -> None:
    state = given(start(GATED), complete("build")).state
    text = rendered(state)
    assert "awaiting approval" in text, text
    assert "awaiting approval" not in rendered(given(start(GATED)).state)
