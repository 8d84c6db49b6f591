"""The two providers' wire formats, as the fake model server (dagnats/llm/fake.py) writes them:
OpenAI chat completions and Anthropic messages, whole and as server-sent events.

Pure: builds dicts and bytes from a scripted reply; no I/O.
"""

from __future__ import annotations

from typing import Any

import msgspec

_encode = msgspec.json.encode


def split_text(text: str, pieces: int) -> list[str]:
    """`text` in `pieces` parts of about equal length (at least one part)."""
    pieces = max(1, min(pieces, len(text) or 1))
    size = -(-len(text) // pieces) if text else 1
    parts = [text[i : i + size] for i in range(0, len(text), size)]
    return parts or [""]


def call_ids(provider: str, turn: int, count: int) -> list[str]:
    prefix = "call" if provider == "openai" else "toolu"
    return [f"{prefix}_{turn}_{index}" for index in range(count)]


# -- OpenAI ---------------------------------------------------------------------------------


def openai_whole(
    model: str, reply: dict[str, Any], ids: list[str], usage: tuple[int, int]
) -> bytes:
    calls = reply.get("tool_calls", [])
    message: dict[str, Any] = {
        "role": "assistant",
        "content": reply.get("text") or None,
        "refusal": reply.get("refusal"),
    }
    if calls:
        message["tool_calls"] = [
            {
                "id": ids[i],
                "type": "function",
                "function": {"name": c["name"], "arguments": _arguments_text(c)},
            }
            for i, c in enumerate(calls)
        ]
    body = {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": _openai_finish(reply)}],
        "usage": {
            "prompt_tokens": usage[0],
            "completion_tokens": usage[1],
            "total_tokens": usage[0] + usage[1],
        },
    }
    return _encode(body)


def openai_events(
    model: str, reply: dict[str, Any], ids: list[str], usage: tuple[int, int], pieces: int
) -> list[bytes]:
    """The SSE events of a streamed reply, each `data: ...\\n\\n`, ending in `[DONE]`."""

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        body = {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        return b"data: " + _encode(body) + b"\n\n"

    events = [chunk({"role": "assistant", "content": ""})]
    if reply.get("refusal"):
        events.append(chunk({"refusal": reply["refusal"]}))
    for piece in split_text(reply.get("text", ""), pieces) if reply.get("text") else []:
        events.append(chunk({"content": piece}))
    for index, call in enumerate(reply.get("tool_calls", [])):
        head = {
            "index": index,
            "id": ids[index],
            "type": "function",
            "function": {"name": call["name"], "arguments": ""},
        }
        events.append(chunk({"tool_calls": [head]}))
        for piece in split_text(_arguments_text(call), 2):
            events.append(
                chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
            )
    events.append(chunk({}, _openai_finish(reply)))
    usage_body = {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": model,
        "choices": [],
        "usage": {
            "prompt_tokens": usage[0],
            "completion_tokens": usage[1],
            "total_tokens": usage[0] + usage[1],
        },
    }
    events.append(b"data: " + _encode(usage_body) + b"\n\n")
    events.append(b"data: [DONE]\n\n")
    return events


def openai_error(status: int, message: str) -> bytes:
    kind = (
        "rate_limit_exceeded"
        if status == 429
        else "server_error"
        if status >= 500
        else "invalid_request_error"
    )
    return _encode({"error": {"message": message, "type": kind, "code": None, "param": None}})


def _openai_finish(reply: dict[str, Any]) -> str:
    return "tool_calls" if reply.get("tool_calls") else "stop"


# -- Anthropic ------------------------------------------------------------------------------


def anthropic_whole(
    model: str, reply: dict[str, Any], ids: list[str], usage: tuple[int, int]
) -> bytes:
    content: list[dict[str, Any]] = []
    text = reply.get("refusal") or reply.get("text")
    if text:
        content.append({"type": "text", "text": text})
    for index, call in enumerate(reply.get("tool_calls", [])):
        content.append(
            {
                "type": "tool_use",
                "id": ids[index],
                "name": call["name"],
                "input": call.get("arguments", {}),
            }
        )
    body = {
        "id": "msg_fake",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": _anthropic_stop(reply),
        "stop_sequence": None,
        "usage": {"input_tokens": usage[0], "output_tokens": usage[1]},
    }
    return _encode(body)


def anthropic_events(
    model: str, reply: dict[str, Any], ids: list[str], usage: tuple[int, int], pieces: int
) -> list[bytes]:
    def event(kind: str, body: dict[str, Any]) -> bytes:
        return b"event: " + kind.encode() + b"\ndata: " + _encode({"type": kind, **body}) + b"\n\n"

    start: dict[str, Any] = {
        "id": "msg_fake",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": usage[0], "output_tokens": 1},
    }
    events = [event("message_start", {"message": start})]
    index = 0
    text = reply.get("refusal") or reply.get("text")
    if text:
        events.append(
            event(
                "content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}
            )
        )
        for piece in split_text(text, pieces):
            events.append(
                event(
                    "content_block_delta",
                    {"index": 0, "delta": {"type": "text_delta", "text": piece}},
                )
            )
        events.append(event("content_block_stop", {"index": 0}))
        index = 1
    for offset, call in enumerate(reply.get("tool_calls", [])):
        block = {"type": "tool_use", "id": ids[offset], "name": call["name"], "input": {}}
        events.append(event("content_block_start", {"index": index, "content_block": block}))
        for piece in split_text(_arguments_text(call), 2):
            delta = {"type": "input_json_delta", "partial_json": piece}
            events.append(event("content_block_delta", {"index": index, "delta": delta}))
        events.append(event("content_block_stop", {"index": index}))
        index += 1
    events.append(
        event(
            "message_delta",
            {
                "delta": {"stop_reason": _anthropic_stop(reply), "stop_sequence": None},
                "usage": {"output_tokens": usage[1]},
            },
        )
    )
    events.append(event("message_stop", {}))
    return events


def anthropic_error(status: int, message: str) -> bytes:
    kind = {
        429: "rate_limit_error",
        401: "authentication_error",
        404: "not_found_error",
        529: "overloaded_error",
    }.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return _encode({"type": "error", "error": {"type": kind, "message": message}})


def _anthropic_stop(reply: dict[str, Any]) -> str:
    if reply.get("refusal"):
        return "refusal"
    return "tool_use" if reply.get("tool_calls") else "end_turn"


def _arguments_text(call: dict[str, Any]) -> str:
    if "arguments_text" in call:  # a model that writes broken JSON
        return str(call["arguments_text"])
    return _encode(call.get("arguments", {})).decode()
