"""Handlers of the `agent_pipeline` example (examples/agent_pipeline/workflow.json).

`pipeline.plan` plans two agent loops: `research` (tools `search`, `fetch`) and `write` (tool
`word_count`), which depends on it. Each turn handler asks the scripted fake model
(`model.py`) and returns `Continue(state, tool_calls)` or `Done(output)` with the usage.
Run them with `dagnats worker examples.agent_pipeline.worker:worker`.
"""

from __future__ import annotations

from typing import Any

from dagnats import Continue, Done, NonRetryableError, TaskContext, Worker

from . import model

worker = Worker(concurrency=8)

PLAN: dict[str, Any] = {
    "steps": [
        {"id": "research", "type": "agent_loop", "task": "agent.research",
         "retry": {"max_attempts": 3, "initial_delay": "100ms"},
         "config": {"max_turns": 5, "max_cost": 1.0,
                    "tools": {"search": "tools.search", "fetch": "tools.fetch"}}},
        {"id": "write", "type": "agent_loop", "task": "agent.write", "depends_on": ["research"],
         "retry": {"max_attempts": 3, "initial_delay": "100ms"},
         "config": {"max_turns": 4, "on_limit": "complete", "loop_delay": "50ms",
                    "tools": {"word_count": "tools.word_count"}}},
    ]
}  # fmt: skip


def usage_of(reply: model.Reply) -> dict[str, Any]:
    """The usage the model reported, as Continue/Done take it."""
    return {"tokens_in": reply.tokens_in, "tokens_out": reply.tokens_out, "cost": reply.cost}


@worker.task("pipeline.plan")
async def plan(ctx: TaskContext) -> dict[str, Any]:
    return PLAN


@worker.task("agent.research")
async def research(ctx: TaskContext) -> Continue | Done:
    reply = model.research(ctx.input["topic"], ctx.turn, ctx.tool_results)
    if reply.answer is not None:
        return Done(reply.answer, **usage_of(reply))
    notes = [*(ctx.state or {}).get("notes", []), *reply.notes]
    return Continue({"notes": notes}, reply.tool_calls, **usage_of(reply))


@worker.task("agent.write")
async def write(ctx: TaskContext) -> Continue | Done:
    reply = model.write(ctx.input, ctx.turn, ctx.tool_results)
    if reply.answer is not None:
        return Done(reply.answer, **usage_of(reply))
    return Continue({"draft": reply.notes[0]}, reply.tool_calls, **usage_of(reply))


@worker.task("tools.search")
async def search(ctx: TaskContext) -> dict[str, Any]:
    query = ctx.input["query"]
    return {"urls": [f"https://example.org/{query.replace(' ', '-')}/{n}" for n in (1, 2)]}


@worker.task("tools.fetch")
async def fetch(ctx: TaskContext) -> dict[str, Any]:
    url = ctx.input["url"]
    if url.endswith("/2") and ctx.attempt == 1:
        raise ConnectionError("connection reset")  # retried: the tool call's own attempts
    return {"url": url, "text": f"contents of {url}"}


@worker.task("tools.word_count")
async def word_count(ctx: TaskContext) -> int:
    text = ctx.input["text"]
    if not isinstance(text, str):
        raise NonRetryableError("text must be a string")
    return len(text.split())


@worker.task("pipeline.publish")
async def publish(ctx: TaskContext) -> dict[str, Any]:
    written = ctx.input["plan"]["write"]  # the plan's terminal outputs; "review" holds the approval
    return {"published": written["draft"], "words": written["words"], "review": ctx.input["review"]}
