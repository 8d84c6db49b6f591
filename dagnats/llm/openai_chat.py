"""The OpenAI chat completions adapter (also vLLM, llama.cpp, Ollama and any server that speaks
the same API, through `base_url`), on the official `openai` SDK (`pip install dagnats[openai]`).

```python
model = OpenAIChat("gpt-4o-mini")                                   # OPENAI_API_KEY
local = OpenAIChat("qwen2.5-coder", base_url="http://127.0.0.1:11434/v1", api_key="ollama")
```

Settings, `complete` and the error mapping are shared (dagnats/llm/sdk_model.py, errors.py).
"""

from __future__ import annotations

from typing import Any

import msgspec

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


class OpenAIChat(SdkModel):
    """A model behind an OpenAI-compatible `/chat/completions` endpoint."""

    key_env = "OPENAI_API_KEY"
    base_url_env = "OPENAI_BASE_URL"
    example = "gpt-4o-mini"

    def __init__(
        self, model: str, *, api_key: str | None = None, base_url: str | None = None,
        timeout_s: float = timeout_s_default, stream: bool = True,
    ) -> None:  # fmt: skip
        """`api_key` defaults to `$OPENAI_API_KEY` (a local server may take any string);
        `base_url` to `$OPENAI_BASE_URL`, else OpenAI's.

        Raises:
            ImportError: the `openai` package is missing (`pip install dagnats[openai]`).
            ValueError: an empty model name or a timeout that is not positive.
        """
        try:
            import openai
        except ImportError as error:
            raise ImportError("OpenAIChat needs `pip install 'dagnats[openai]'`") from error
        super().__init__(openai, model, api_key, base_url, timeout_s, stream)
        self._client = openai.AsyncOpenAI(
            api_key=self._key, base_url=self.base_url, timeout=timeout_s, max_retries=0
        )

    def _arguments(self, request: ModelRequest) -> dict[str, Any]:
        arguments: dict[str, Any] = {
            "model": self._model,
            "messages": to_openai(request.system, request.messages),
            "max_completion_tokens": request.max_tokens,
        }
        if request.tools:
            arguments["tools"] = [
                {"type": "function", "function": {
                    "name": tool.name, "description": tool.description,
                    "parameters": tool.parameters,
                }}
                for tool in request.tools
            ]  # fmt: skip
        return arguments

    async def _whole(self, request: ModelRequest) -> ModelReply:
        completions: Any = self._client.chat.completions
        response = await completions.create(**self._arguments(request))
        choice = response.choices[0]
        message = choice.message
        calls = tuple(
            _call(call.id, call.function.name, call.function.arguments or "")
            for call in message.tool_calls or ()
        )
        usage = response.usage
        return self._reply(
            message.content or "", calls, usage, choice.finish_reason or "",
            getattr(message, "refusal", None) or "",
        )  # fmt: skip

    async def _streamed(self, request: ModelRequest, on_text: TextSink | None) -> ModelReply:
        completions: Any = self._client.chat.completions
        arguments = self._arguments(request)
        stream = await completions.create(
            **arguments, stream=True, stream_options={"include_usage": True}
        )
        text: list[str] = []
        refusal: list[str] = []
        calls: dict[int, list[str]] = {}  # index -> [id, name, arguments text]
        usage: Any = None
        finish = ""
        async for chunk in stream:
            usage = chunk.usage or usage
            for choice in chunk.choices:
                delta = choice.delta
                finish = choice.finish_reason or finish
                if getattr(delta, "refusal", None):
                    refusal.append(delta.refusal)
                if delta.content:
                    text.append(delta.content)
                    if on_text is not None:
                        await on_text(delta.content)
                for call in delta.tool_calls or ():
                    slot = calls.setdefault(call.index, ["", "", ""])
                    slot[0] = call.id or slot[0]
                    if call.function is not None:
                        slot[1] += call.function.name or ""
                        slot[2] += call.function.arguments or ""
        requests = tuple(_call(*calls[index]) for index in sorted(calls))
        return self._reply("".join(text), requests, usage, finish, "".join(refusal))

    def _reply(
        self, text: str, calls: tuple[CallRequest, ...], usage: Any, finish: str, refusal: str
    ) -> ModelReply:
        if refusal or finish == "content_filter":
            raise refused(self._model, refusal or "content filter", (self._key,))
        return ModelReply(
            model=self._model, text=text, tool_calls=calls,
            tokens_in=int(getattr(usage, "prompt_tokens", 0) or 0),
            tokens_out=int(getattr(usage, "completion_tokens", 0) or 0),
            stop_reason=finish,
        )  # fmt: skip


def _call(call_id: str, name: str, text: str) -> CallRequest:
    arguments, raw = arguments_of(text)
    return CallRequest(id=call_id, name=name, arguments=arguments, raw=raw)


def to_openai(system: str, messages: tuple[Message, ...]) -> list[dict[str, Any]]:
    """The conversation in chat completions' message format."""
    out: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    for message in messages:
        if message.role == "user":
            out.append({"role": "user", "content": message.text})
        elif message.role == "tool":
            out.append({"role": "tool", "tool_call_id": message.call_id, "content": message.text})
        else:
            entry: dict[str, Any] = {"role": "assistant", "content": message.text or None}
            if message.tool_calls:
                entry["tool_calls"] = [
                    {"id": call.id, "type": "function", "function": {
                        "name": call.name,
                        "arguments": call.raw or msgspec.json.encode(call.arguments).decode(),
                    }}
                    for call in message.tool_calls
                ]  # fmt: skip
            out.append(entry)
    return out
