"""The Anthropic messages adapter with tools, on the official `anthropic` SDK
(`pip install dagnats[anthropic]`).

```python
model = AnthropicMessages("claude-sonnet-4-5")                     # ANTHROPIC_API_KEY
```

Settings, `complete` and the error mapping are shared (dagnats/llm/sdk_model.py, errors.py).
"""

from __future__ import annotations

from typing import Any

from dagnats.llm.errors import refused
from dagnats.llm.model import (
    CallRequest,
    Message,
    ModelReply,
    ModelRequest,
    TextSink,
    arguments_of,
)
from dagnats.llm.sdk_model import SdkModel, timeout_s_default


class AnthropicMessages(SdkModel):
    """A model behind Anthropic's `/v1/messages` endpoint."""

    key_env = "ANTHROPIC_API_KEY"
    base_url_env = "ANTHROPIC_BASE_URL"
    example = "claude-sonnet-4-5"
    malformed = (ValueError, KeyError, TypeError, AttributeError)

    def __init__(
        self, model: str, *, api_key: str | None = None, base_url: str | None = None,
        timeout_s: float = timeout_s_default, stream: bool = True,
    ) -> None:  # fmt: skip
        """`api_key` defaults to `$ANTHROPIC_API_KEY`; `base_url` to `$ANTHROPIC_BASE_URL`,
        else Anthropic's.

        Raises:
            ImportError: the `anthropic` package is missing (`pip install dagnats[anthropic]`).
            ValueError: an empty model name or a timeout that is not positive.
        """
        try:
            import anthropic
        except ImportError as error:
            raise ImportError(
                "AnthropicMessages needs `pip install 'dagnats[anthropic]'`"
            ) from error
        super().__init__(anthropic, model, api_key, base_url, timeout_s, stream)
        self._client = anthropic.AsyncAnthropic(
            api_key=self._key, base_url=self.base_url, timeout=timeout_s, max_retries=0
        )

    def _arguments(self, request: ModelRequest) -> dict[str, Any]:
        arguments: dict[str, Any] = {
            "model": self._model,
            "messages": to_anthropic(request.messages),
            "max_tokens": request.max_tokens,
        }
        if request.system:
            arguments["system"] = request.system
        if request.tools:
            arguments["tools"] = [
                {"name": t.name, "description": t.description, "input_schema": t.parameters}
                for t in request.tools
            ]
        return arguments

    async def _whole(self, request: ModelRequest) -> ModelReply:
        messages: Any = self._client.messages
        response = await messages.create(**self._arguments(request))
        text = "".join(block.text for block in response.content if block.type == "text")
        calls = tuple(
            CallRequest(id=block.id, name=block.name, arguments=block.input)
            for block in response.content
            if block.type == "tool_use"
        )
        usage = response.usage
        return self._reply(
            text, calls, usage.input_tokens, usage.output_tokens, response.stop_reason or ""
        )

    async def _streamed(self, request: ModelRequest, on_text: TextSink | None) -> ModelReply:
        messages: Any = self._client.messages
        stream = await messages.create(**self._arguments(request), stream=True)
        text: list[str] = []
        blocks: dict[int, list[str]] = {}  # index -> [id, name, input JSON text]
        tokens_in = tokens_out = 0
        stop = ""
        async for event in stream:
            kind = event.type
            if kind == "message_start":
                tokens_in = int(event.message.usage.input_tokens or 0)
                tokens_out = int(event.message.usage.output_tokens or 0)
            elif kind == "content_block_start" and event.content_block.type == "tool_use":
                blocks[event.index] = [event.content_block.id, event.content_block.name, ""]
            elif kind == "content_block_delta" and event.delta.type == "text_delta":
                text.append(event.delta.text)
                if on_text is not None:
                    await on_text(event.delta.text)
            elif kind == "content_block_delta" and event.delta.type == "input_json_delta":
                blocks[event.index][2] += event.delta.partial_json
            elif kind == "message_delta":
                stop = event.delta.stop_reason or stop
                tokens_out = int(getattr(event.usage, "output_tokens", 0) or tokens_out)
        calls = []
        for index in sorted(blocks):
            call_id, name, json_text = blocks[index]
            arguments, raw = arguments_of(json_text)
            calls.append(CallRequest(id=call_id, name=name, arguments=arguments, raw=raw))
        return self._reply("".join(text), tuple(calls), tokens_in, tokens_out, stop)

    def _reply(
        self, text: str, calls: tuple[CallRequest, ...], tokens_in: int, tokens_out: int,
        stop: str,
    ) -> ModelReply:  # fmt: skip
        if stop == "refusal":
            raise refused(self._model, text or "no reason given", (self._key,))
        return ModelReply(
            model=self._model, text=text, tool_calls=calls, tokens_in=tokens_in,
            tokens_out=tokens_out, stop_reason=stop,
        )  # fmt: skip


def to_anthropic(messages: tuple[Message, ...]) -> list[dict[str, Any]]:
    """The conversation in the messages API's format: tool results (and any user text right
    after them) go in one user message, as the API wants them."""
    out: list[dict[str, Any]] = []
    for message in messages:
        if message.role == "assistant":
            content: list[dict[str, Any]] = []
            if message.text:
                content.append({"type": "text", "text": message.text})
            for call in message.tool_calls:
                given = call.arguments if isinstance(call.arguments, dict) else {}
                content.append({"type": "tool_use", "id": call.id, "name": call.name,
                                "input": given})  # fmt: skip
            out.append({"role": "assistant", "content": content})
            continue
        if message.role == "tool":
            block: dict[str, Any] = {"type": "tool_result", "tool_use_id": message.call_id,
                                     "content": message.text}  # fmt: skip
            if not message.ok:
                block["is_error"] = True
        else:
            block = {"type": "text", "text": message.text}
        if out and out[-1]["role"] == "user":
            out[-1]["content"].append(block)
        else:
            out.append({"role": "user", "content": [block]})
    return out
