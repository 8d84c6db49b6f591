"""`agent_turn` and `Toolset` without NATS: the conversation is rebuilt from the carried state
and the tool results, tool calls map to ToolCall and answers to Done, bad tool calls and
answers that do not decode are fed back, usage and cost are reported."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from dagnats.agent import Continue, Done
from dagnats.llm import Price, PriceTable, Toolset, TurnState, agent_turn
from dagnats.worker import Worker
from dagnats.worker_context import NonRetryableError, TaskContext
from tests.fake_model import PROVIDERS, fake_server, model_for, turn_context


class Patch(msgspec.Struct, frozen=True, kw_only=True):
    path: str
    lines: list[str]


class Verdict(msgspec.Struct, frozen=True, kw_only=True):
    passed: bool
    summary: str


def make_tools() -> Toolset:
    tools = Toolset(prefix="t.")

    @tools.tool
    async def read_file(path: str, max_bytes: int = 1000) -> str:
        """Read a file."""
        return f"contents of {path} ({max_bytes})"

    @tools.tool(name="apply_patch")
    def apply(ctx: TaskContext, patch: Patch) -> dict[str, Any]:
        """Apply a patch."""
        return {"run": ctx.run_id, "path": patch.path, "lines": len(patch.lines)}

    return tools


def test_a_tool_schema_comes_from_the_signature_or_the_struct_and_both_lists_agree() -> None:
    tools = make_tools()
    specs = {spec.name: spec for spec in tools.specs()}
    read = specs["read_file"].parameters
    assert read["type"] == "object" and read["required"] == ["path"]
    assert read["properties"]["path"] == {"type": "string"}
    assert read["properties"]["max_bytes"] == {"type": "integer", "default": 1000}
    assert specs["read_file"].description == "Read a file."
    patch = specs["apply_patch"].parameters
    assert set(patch["properties"]) == {"path", "lines"} and "ctx" not in str(patch)
    assert tools.config() == {"read_file": "t.read_file", "apply_patch": "t.apply_patch"}
    worker = Worker()
    tools.register(worker)
    assert sorted(worker.handlers) == ["t.apply_patch", "t.read_file"]


def test_a_tool_needs_typed_named_parameters_and_a_valid_unique_name() -> None:
    tools = Toolset()
    with pytest.raises(ValueError, match="needs a type"):
        tools.tool(name="untyped")(lambda path: path)
    with pytest.raises(ValueError, match="must match"):
        tools.tool(name="read file")(make_tools().tools["read_file"].function)

    @tools.tool
    def once(x: int) -> int:
        return x

    with pytest.raises(ValueError, match="declared twice"):
        tools.tool(name="once")(once)


async def test_a_tool_task_runs_its_function_and_refuses_arguments_that_do_not_match() -> None:
    tools = make_tools()
    ctx = turn_context(None, turn=0)
    ctx.input_raw = b'{"path": "a.py", "lines": ["x", "y"]}'  # the Struct's fields
    assert await tools.tools["apply_patch"].run(ctx) == {"run": "r1", "path": "a.py", "lines": 2}
    ctx.input_raw = b'{"path": "a.py"}'
    assert await tools.tools["read_file"].run(ctx) == "contents of a.py (1000)"
    ctx.input_raw = b'{"path": 3}'
    with pytest.raises(NonRetryableError, match=r"tool 'read_file'.*Expected `str`"):
        await tools.tools["read_file"].run(ctx)


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_turns_rebuild_the_conversation_from_state_and_tool_results(provider: str) -> None:
    replies = [
        {"text": "Reading.", "usage": [1000, 100], "tool_calls": [
            {"name": "read_file", "arguments": {"path": "a.py"}},
            {"name": "nope", "arguments": {}},
            {"name": "read_file", "arguments": {"path": 5}},
        ]},
        {"text": "All good.", "usage": [2000, 50]},
    ]  # fmt: skip
    prices = PriceTable({"fake-model": Price(3.0, 15.0)})
    async with fake_server({"agents": [{"match": "", "replies": replies}]}) as server:
        model = model_for(provider, server.url, name="fake-model")
        turn = agent_turn(model=model, system="You fix code.", tools=make_tools(), prices=prices)
        first = await turn(turn_context({"task": "fix a.py"}))
        assert isinstance(first, Continue)
        assert [(c.name, c.arguments) for c in first.tool_calls] == [
            ("read_file", {"path": "a.py"})
        ]
        assert (first.tokens_in, first.tokens_out) == (1000, 100)
        assert first.cost == pytest.approx((1000 * 3.0 + 100 * 15.0) / 1e6)
        carried = msgspec.convert(first.state, TurnState)
        errors = [m for m in carried.messages if m.role == "tool"]
        assert len(errors) == 2 and not any(m.ok for m in errors)
        assert "unknown tool 'nope'" in errors[0].text and "do not match" in errors[1].text
        call = first.tool_calls[0]
        results = [{"id": call.id, "name": "read_file", "ok": True, "output": "x = 1"}]
        # A fresh handler (another process) with the same carried state and results: the
        # conversation comes from them alone.
        again = agent_turn(model=model, system="You fix code.", tools=make_tools(), prices=prices)
        second = await again(turn_context({"task": "fix a.py"}, turn=2, state=first.state,
                                          tool_results=results))  # fmt: skip
    assert isinstance(second, Done) and second.output == "All good."
    assert [e["turn"] for e in server.log] == [0, 1]


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_an_answer_that_does_not_decode_is_fed_back_until_it_does(provider: str) -> None:
    replies = [
        {"text": "Sure! It passed."},
        {"text": '```json\n{"passed": true, "summary": "ok"}\n```'},
    ]
    async with fake_server({"agents": [{"match": "", "replies": replies}]}) as server:
        turn = agent_turn(model=model_for(provider, server.url), output_type=Verdict)
        first = await turn(turn_context("check it"))
        assert isinstance(first, Continue) and not first.tool_calls
        carried = msgspec.convert(first.state, TurnState)
        assert carried.output_errors == 1 and "invalid_output" in carried.messages[-1].text
        assert "Verdict" in carried.messages[-1].text
        second = await turn(turn_context("check it", turn=2, state=first.state))
    assert isinstance(second, Done) and second.output == {"passed": True, "summary": "ok"}


async def test_an_answer_that_never_decodes_fails_the_turn_after_the_bound() -> None:
    replies = [{"text": "no"}, {"text": "still no"}]
    async with fake_server({"agents": [{"match": "", "replies": replies}]}) as server:
        turn = agent_turn(model=model_for("openai", server.url), output_type=Verdict,
                          output_retries=1)  # fmt: skip
        first = await turn(turn_context("check it"))
        assert isinstance(first, Continue)
        with pytest.raises(NonRetryableError, match=r"did not decode as Verdict after 2 tries"):
            await turn(turn_context("check it", turn=2, state=first.state))
    with pytest.raises(ValueError, match="output_retries_max"):
        agent_turn(model=model_for("openai", server.url), output_retries=99)


def test_a_price_table_matches_dated_names_and_can_be_overridden() -> None:
    table = PriceTable()
    assert table.cost("gpt-4o-2024-08-06", 1_000_000, 0) == pytest.approx(2.5)
    assert table.cost("gpt-4o-mini-2024-07-18", 1_000_000, 0) == pytest.approx(0.15)
    assert table.cost("llama3:8b", 10**6, 10**6) == 0.0
    custom = PriceTable({"gpt-4o": Price(1.0, 1.0)}, defaults=False)
    assert custom.cost("gpt-4o", 10**6, 10**6) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="must not be negative"):
        PriceTable({"x": Price(-1.0, 0.0)})
