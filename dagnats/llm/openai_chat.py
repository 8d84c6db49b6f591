"""The OpenAI chat completions adapter (also vLLM, llama.cpp, Ollama and any server that speaks
the same API, through `base_url`), on the official `openai` SDK (`pip install dagnats[openai]`).

```python
model = OpenAIChat("gpt-4o-mini")                                   # OPENAI_API_KEY
local = OpenAIChat("qwen2.5-coder", base_url="http://127.0.0.1:11434/v1", api_key="ollama")
```

The SDK's own retries are off (`max_retries=0`): a failed call fails the turn's attempt and
the step's retry policy decides (dagnats/llm/model.py classifies the errors).
"""

from __future__ import annotations

import os
from typing import Any, Final

import msgspec

from dagnats.llm.model import (
    CallRequest,
    Message,
    ModelCallError,
    ModelReply,
    ModelRequest,
    ModelRequestError,
    TextSink,
    arguments_of,
    provider_message,
    redact,
    status_error,
)
from dagnats.runtime import settings

timeout_s_default: Final = settings.llm_timeout_s_default


class OpenAIChat:
    """A model behind an OpenAI-compatible `/chat/completions` endpoint."""

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
        if not model:
            raise ValueError("model must name a model (e.g. 'gpt-4o-mini')")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s {timeout_s!r} must be above 0 seconds")
        try:
            import openai
        except ImportError as error:
            raise ImportError("OpenAIChat needs `pip install 'dagnats[openai]'`") from error
        self._openai = openai
        self._model = model
        self._key = api_key or os.environ.get("OPENAI_API_KEY") or "no-key"
        self.base_url = base_url or os.environ.get("OPENAI_BASE_URL")
        self.timeout_s = timeout_s
        self.stream = stream
        self._client = openai.AsyncOpenAI(
            api_key=self._key, base_url=self.base_url, timeout=timeout_s, max_retries=0
        )

    @property
    def name(self) -> str:
        return self._model

    def __repr__(self) -> str:  # never the key
        return f"OpenAIChat({self._model!r}, base_url={self.base_url!r})"

    async def complete(self, request: ModelRequest, on_text: TextSink | None = None) -> ModelReply:
        """The model's reply (see `dagnats.llm.model.Model.complete`)."""
        openai = self._openai
        try:
            if self.stream:
                return await self._streamed(request, on_text)
            return await self._whole(request)
        except openai.APIStatusError as error:
            message = provider_message(error.body, error.message)
            raise status_error(
                self._model, error.status_code, message, error.response.headers, (self._key,)
            ) from None
        except openai.APITimeoutError:
            raise ModelCallError(
                f"model {self._model!r}: no reply within {self.timeout_s:g}s (timeout_s)",
                model=self._model, status=None,
            ) from None  # fmt: skip
        except (openai.APIError, ValueError, KeyError, TypeError) as error:
            shown = redact(f"{type(error).__name__}: {error}", (self._key,))
            raise ModelCallError(
                f"model {self._model!r}: the call failed or its reply is malformed: {shown}",
                model=self._model, status=None,
            ) from None  # fmt: skip

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
            shown = redact(refusal or "content filter", (self._key,))
            raise ModelRequestError(
                f"model {self._model!r} refused: {shown} (not retried)",
                model=self._model, status=200,
            )  # fmt: skip
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
