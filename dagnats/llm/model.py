"""What every model adapter takes and gives: the request, the reply, the errors, the prices.

A `Model` (dagnats/llm/openai_chat.py, dagnats/llm/anthropic_messages.py, or a user's own)
sends one conversation to a model and returns one `ModelReply`; while a call streams it hands
each piece of text to `on_text` (the worker publishes it live: dagnats/llm/live.py). Errors
are classified here once, for every provider: 429 and 5xx are retryable through the step's
retry policy (`RetryAfter` when the server said when), other 4xx are the user's to fix
(`ModelRequestError`, non-retryable), and every message names the model, the status and the
provider's message, never the API key.

This module does no I/O.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final, Literal, Protocol

import msgspec

from dagnats.runtime import settings
from dagnats.worker import RetryAfter
from dagnats.worker_context import NonRetryableError
from kernel.errors import DagnatsError

TextSink = Callable[[str], Awaitable[None]]
provider_message_chars_max: Final = settings.llm_provider_message_chars_max
retry_after_s_max: Final = settings.llm_retry_after_s_max


class CallRequest(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A tool call the model asked for (`arguments`: decoded JSON, or the raw text when the
    model wrote something that is not JSON)."""

    id: str
    name: str
    arguments: Any = None
    raw: str = ""  # what the model wrote when it is not JSON (then `arguments` is None)


class Message(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One message of a conversation, provider-neutral (what a turn carries in its state).

    `role` "user" (text), "assistant" (text and/or tool calls) or "tool" (the result of the
    tool call `call_id`: `content`, `ok` False for an error the model should see)."""

    role: Literal["user", "assistant", "tool"]
    text: str = ""
    tool_calls: tuple[CallRequest, ...] = ()
    call_id: str = ""
    name: str = ""
    ok: bool = True


class ToolSpec(msgspec.Struct, frozen=True, kw_only=True):
    """A tool as the model sees it: name, description, JSON Schema of its arguments."""

    name: str
    description: str
    parameters: dict[str, Any]


class ModelRequest(msgspec.Struct, frozen=True, kw_only=True):
    system: str
    messages: tuple[Message, ...]
    tools: tuple[ToolSpec, ...] = ()
    max_tokens: int = 4096


class ModelReply(msgspec.Struct, frozen=True, kw_only=True):
    """What the model answered: text and/or tool calls, and the tokens it counted."""

    model: str
    text: str = ""
    tool_calls: tuple[CallRequest, ...] = ()
    tokens_in: int = 0
    tokens_out: int = 0
    stop_reason: str = ""
    refusal: str = ""


class Model(Protocol):
    """One model behind one provider's API."""

    @property
    def name(self) -> str: ...

    async def complete(self, request: ModelRequest, on_text: TextSink | None = None) -> ModelReply:
        """The model's reply to `request`, its text handed to `on_text` as it streams.

        Raises:
            ModelCallError: retryable (429, 5xx, timeouts, malformed replies).
            RetryAfterError: retryable no sooner than the server said.
            ModelRequestError: a 4xx the user must fix, or a refusal (non-retryable).
        """
        ...


class ModelCallError(DagnatsError):
    """A model call failed in a way a later attempt may not (the step's retry policy)."""

    def __init__(self, message: str, *, model: str, status: int | None) -> None:
        self.model = model
        self.status = status
        super().__init__(message)


class ModelRequestError(NonRetryableError):
    """A model call the provider refused for a reason retrying cannot fix (a 4xx, a refusal)."""

    def __init__(self, message: str, *, model: str, status: int | None) -> None:
        self.model = model
        self.status = status
        super().__init__(message)


def redact(text: str, secrets: tuple[str, ...]) -> str:
    """`text` without any of `secrets` (an API key a provider echoed back), cut short."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[redacted]")
    text = " ".join(text.split())
    if len(text) > provider_message_chars_max:
        text = text[:provider_message_chars_max] + "..."
    return text


def retry_after_s(headers: Mapping[str, str] | None) -> float | None:
    """The server's `retry-after` (seconds; `retry-after-ms` too), bounded, or None."""
    if headers is None:
        return None
    for key, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(key)
        if value is None:
            continue
        try:
            seconds = float(value) / scale
        except ValueError:
            continue  # an HTTP date: the step's own backoff decides
        if seconds >= 0:
            return min(seconds, retry_after_s_max)
    return None


def provider_message(body: object, fallback: str) -> str:
    """The provider's own words in an error body (`{"error": {"message": ...}}`, or
    `{"message": ...}`), else `fallback`."""
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            return str(inner["message"])
        if isinstance(body.get("message"), str):
            return str(body["message"])
    if isinstance(body, str) and body:
        return body
    return fallback


def arguments_of(text: str) -> tuple[Any, str]:
    """(decoded arguments, "") of a tool call's JSON text, or (None, text) when it is not
    JSON (the turn feeds that back to the model as a tool error)."""
    if not text.strip():
        return {}, ""
    try:
        return msgspec.json.decode(text), ""
    except msgspec.DecodeError:
        return None, text


def status_error(
    model: str, status: int, provider_message: str, headers: Mapping[str, str] | None,
    secrets: tuple[str, ...],
) -> Exception:  # fmt: skip
    """The exception a handler raises for an HTTP error `status` of a model call."""
    shown = redact(provider_message, secrets) or "(no message)"
    message = f"model {model!r}: HTTP {status}: {shown}"
    if status == 429 or status >= 500 or status in (408, 409):
        wait_s = retry_after_s(headers)
        if wait_s is not None:
            return RetryAfter(wait_s, f"{message} (retry after {wait_s:g}s)")
        return ModelCallError(message, model=model, status=status)
    hint = {
        401: "check the API key",
        403: "check the key's permissions",
        404: "check the model name and base_url",
    }.get(status, "fix the request")
    return ModelRequestError(f"{message} ({hint}; not retried)", model=model, status=status)


# -- prices ---------------------------------------------------------------------------------


class Price(msgspec.Struct, frozen=True):
    """Dollars per million input tokens and per million output tokens."""

    input_per_mtok: float
    output_per_mtok: float


DEFAULT_PRICES: Final[dict[str, Price]] = {
    "gpt-4o": Price(2.5, 10.0),
    "gpt-4o-mini": Price(0.15, 0.6),
    "gpt-4.1": Price(2.0, 8.0),
    "gpt-4.1-mini": Price(0.4, 1.6),
    "claude-sonnet-4-5": Price(3.0, 15.0),
    "claude-haiku-4-5": Price(1.0, 5.0),
    "claude-opus-4-1": Price(15.0, 75.0),
}


class PriceTable:
    """Model name -> `Price`; the cost of a reply. Unknown models cost 0 (a local model).

    A name matches exactly, else the longest known name it starts with (dated snapshots such
    as `gpt-4o-2024-08-06` cost what `gpt-4o` costs)."""

    def __init__(self, prices: Mapping[str, Price] | None = None, *, defaults: bool = True) -> None:
        table = dict(DEFAULT_PRICES) if defaults else {}
        table.update(prices or {})
        for name, price in table.items():
            if price.input_per_mtok < 0 or price.output_per_mtok < 0:
                raise ValueError(f"prices[{name!r}] {price} must not be negative")
        self.prices = table

    def price_of(self, model: str) -> Price | None:
        if model in self.prices:
            return self.prices[model]
        known = [name for name in self.prices if model.startswith(name)]
        return self.prices[max(known, key=len)] if known else None

    def cost(self, model: str, tokens_in: int, tokens_out: int) -> float:
        price = self.price_of(model)
        if price is None:
            return 0.0
        return (tokens_in * price.input_per_mtok + tokens_out * price.output_per_mtok) / 1e6
