"""A scripted fake model: deterministic replies keyed by role and turn. No network, no weights.

A real model would be called here with the prompt, the carried state and the tool results;
the script answers the way such a model would, and reports a made-up token usage and cost so
the loop's budgets have something to count.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dagnats import ToolCall, ToolResult


@dataclass(frozen=True)
class Reply:
    """What the model said: tool calls to make, or a final answer."""

    tool_calls: tuple[ToolCall, ...] = ()
    answer: Any = None
    tokens_in: int = 0
    tokens_out: int = 0
    cost: float = 0.0
    notes: tuple[Any, ...] = field(default_factory=tuple)


def research(topic: str, turn: int, results: tuple[ToolResult, ...]) -> Reply:
    """Turn 1 searches; turn 2 fetches what the search found; turn 3 answers."""
    seen = tuple(r.output if r.ok else {"failed": (r.error or {}).get("message")} for r in results)
    if turn == 1:
        return Reply((ToolCall("search", {"query": topic}, id="q1"),), tokens_in=120, tokens_out=30,
                     cost=0.002, notes=seen)  # fmt: skip
    if turn == 2:
        urls = [url for result in results if result.ok for url in result.output["urls"]]
        calls = tuple(ToolCall("fetch", {"url": url}, id=f"f{i}") for i, url in enumerate(urls))
        return Reply(calls, tokens_in=400, tokens_out=40, cost=0.005, notes=seen)
    return Reply(answer={"topic": topic, "sources": [r.output for r in results if r.ok]},
                 tokens_in=900, tokens_out=200, cost=0.012, notes=seen)  # fmt: skip


def write(facts: Any, turn: int, results: tuple[ToolResult, ...]) -> Reply:
    """Turn 1 drafts and counts the words; turn 2 accepts the draft."""
    draft = f"A note on {facts['topic']}: {len(facts['sources'])} sources agree it works."
    if turn == 1:
        return Reply((ToolCall("word_count", {"text": draft}),), tokens_in=300, tokens_out=80,
                     cost=0.004, notes=(draft,))  # fmt: skip
    words = results[0].output if results and results[0].ok else None
    return Reply(answer={"draft": draft, "words": words}, tokens_in=350, tokens_out=20, cost=0.003)
