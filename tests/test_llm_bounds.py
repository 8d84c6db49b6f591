"""The LLM bounds live in one place (dagnats/runtime/settings.py) and the carried conversation
is capped: a turn whose conversation would pass `llm_conversation_bytes_max` fails for good
with an error naming the size, the bound and a hint, and a start_child outside an agent turn
says why it cannot run."""

from __future__ import annotations

import pytest

from dagnats.agent import Continue
from dagnats.llm import agent_turn, live, model, tools, turn
from dagnats.runtime import settings
from dagnats.worker_context import NonRetryableError
from kernel import limits
from tests.fake_model import fake_server, model_for, turn_context

REPLY = {
    "text": "Looking.",
    "tool_calls": [{"name": "start_workflow", "arguments": {"workflow": "w"}}],
}


def test_the_llm_modules_take_their_bounds_from_settings() -> None:
    assert turn.output_retries_max == settings.llm_output_retries_max
    assert turn.tool_result_chars_max == settings.llm_tool_result_chars_max
    assert turn.conversation_bytes_max == settings.llm_conversation_bytes_max
    assert live.live_text_bytes_max == settings.llm_live_text_bytes_max
    assert model.retry_after_s_max == settings.llm_retry_after_s_max
    assert tools.tools_per_set_max == limits.agent_tool_calls_per_turn_max
    assert settings.llm_conversation_bytes_max < limits.payload_bytes_max


async def test_a_conversation_over_its_cap_fails_the_turn_naming_size_and_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with fake_server({"agents": [{"match": "", "replies": [REPLY]}]}) as server:
        handler = agent_turn(model=model_for("openai", server.url), child_runs=True)
        fits = await handler(turn_context({"task": "x"}))
        assert isinstance(fits, Continue) and fits.tool_calls[0].name == "dagnats.start_child"
        monkeypatch.setattr(turn, "conversation_bytes_max", 100)
        with pytest.raises(NonRetryableError) as caught:
            await handler(turn_context({"task": "x" * 200}))
    message = str(caught.value)
    assert "the limit is 100 bytes (llm_conversation_bytes_max)" in message
    assert "bytes; the limit" in message and "Hint:" in message and "gpt-4o-mini" in message


def test_start_child_outside_an_agent_turn_says_why() -> None:
    ctx = turn_context(None, turn=0)
    with pytest.raises(NonRetryableError, match="start_child works in an agent_loop turn only"):
        ctx.start_child("w", {})
    turn_ctx = turn_context(None, turn=1)
    assert turn_ctx.start_child("w", {"a": 1}) == "child0"
    assert turn_ctx.start_child({"name": "x", "steps": []}) == "child1"
    assert turn_ctx.children[0].arguments == {"workflow": "w", "input": {"a": 1}}
