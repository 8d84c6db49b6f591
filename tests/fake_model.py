"""Helpers of the LLM tests: the fake model server (dagnats/llm/fake.py) in the test's event
loop, model adapters pointed at it, and a turn's TaskContext built as the worker builds it."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import msgspec

from dagnats.llm import AnthropicMessages, Model, OpenAIChat
from dagnats.llm.fake import FakeModelServer
from dagnats.worker_context import TaskContext
from kernel.effects import EnqueueTask

PROVIDERS = ("openai", "anthropic")
TEST_KEY = "sk-test-0123456789-secret"


@contextlib.asynccontextmanager
async def fake_server(script: dict[str, Any]) -> AsyncIterator[FakeModelServer]:
    server = FakeModelServer(script)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def model_for(
    provider: str, url: str, *, stream: bool = True, timeout_s: float = 10.0, name: str = ""
) -> Model:
    """An adapter of `provider` talking to the fake server at `url`."""
    if provider == "openai":
        return OpenAIChat(
            name or "gpt-4o-mini",
            base_url=f"{url}/v1",
            api_key=TEST_KEY,
            timeout_s=timeout_s,
            stream=stream,
        )
    return AnthropicMessages(
        name or "claude-haiku-4-5",
        base_url=url,
        api_key=TEST_KEY,
        timeout_s=timeout_s,
        stream=stream,
    )


def turn_context(
    step_input: Any,
    *,
    turn: int = 1,
    state: Any = None,
    tool_results: list[dict[str, Any]] | None = None,
    attempt: int = 1,
) -> TaskContext:
    """The TaskContext of an agent loop's turn, from a task message as the engine writes it."""
    envelope = {
        "input": step_input,
        "state": state,
        "tool_results": tool_results or [],
        "turn": turn,
    }
    task = EnqueueTask(
        run_id="r1",
        step_id="agent",
        attempt=attempt,
        task="agent.turn",
        input=msgspec.Raw(msgspec.json.encode(envelope)),
        metadata=msgspec.Raw(b"{}"),
        msg_id=f"r1:agent:{attempt}",
        envelope=msgspec.Raw(msgspec.json.encode({"turn": turn})),
    )
    return TaskContext(task, "test-worker")
