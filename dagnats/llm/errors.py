"""The SDK adapters' error mapping, once: what an `openai` or `anthropic` SDK error becomes
(dagnats/llm/model.py classifies HTTP statuses), and a refusal's error."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, TypeVar

from dagnats.llm.model import (
    ModelCallError,
    ModelRequestError,
    provider_message,
    redact,
    status_error,
)

T = TypeVar("T")


async def sdk_call(
    call: Awaitable[T], sdk: Any, *, model: str, timeout_s: float, secrets: tuple[str, ...],
    malformed: tuple[type[BaseException], ...],
) -> T:  # fmt: skip
    """`call`'s result, its SDK's errors mapped to ours: an HTTP status by `status_error`, a
    timeout and a failed or malformed call (`sdk.APIError` or one of `malformed`) as a
    retryable `ModelCallError`. `sdk` is the SDK's module (its error classes share names)."""
    try:
        return await call
    except sdk.APIStatusError as error:
        message = provider_message(error.body, error.message)
        raise status_error(
            model, error.status_code, message, error.response.headers, secrets
        ) from None
    except sdk.APITimeoutError:
        raise ModelCallError(
            f"model {model!r}: no reply within {timeout_s:g}s (timeout_s)",
            model=model, status=None,
        ) from None  # fmt: skip
    except (sdk.APIError, *malformed) as error:
        shown = redact(f"{type(error).__name__}: {error}", secrets)
        raise ModelCallError(
            f"model {model!r}: the call failed or its reply is malformed: {shown}",
            model=model, status=None,
        ) from None  # fmt: skip


def refused(model: str, reason: str, secrets: tuple[str, ...]) -> ModelRequestError:
    """The non-retryable error of a reply the model refused to give (`reason`, redacted)."""
    shown = redact(reason, secrets)
    return ModelRequestError(
        f"model {model!r} refused: {shown} (not retried)", model=model, status=200
    )


def check_adapter(model: str, timeout_s: float, example: str) -> None:
    """Raises ValueError for an empty model name (`example` names one) or a timeout that is
    not positive."""
    if not model:
        raise ValueError(f"model must name a model (e.g. {example!r})")
    if not timeout_s > 0:
        raise ValueError(f"timeout_s {timeout_s!r} must be above 0 seconds")
