"""What the SDK adapters (`OpenAIChat`, `AnthropicMessages`) share: their settings, their
name and repr (never the key), and `complete` with the SDK's errors mapped to ours
(dagnats/llm/errors.py).

The SDK's own retries are off (`max_retries=0`): a failed call fails the turn's attempt and
the step's retry policy decides (dagnats/llm/model.py classifies the errors).
"""

from __future__ import annotations

import os
from typing import Any, ClassVar, Final

from dagnats.llm.errors import check_adapter, sdk_call
from dagnats.llm.model import ModelReply, ModelRequest, TextSink
from dagnats.runtime import settings

timeout_s_default: Final = settings.llm_timeout_s_default


class SdkModel:
    """A model behind a provider's official SDK; subclasses build the client and the calls."""

    key_env: ClassVar[str]
    base_url_env: ClassVar[str]
    example: ClassVar[str]
    malformed: ClassVar[tuple[type[BaseException], ...]] = (ValueError, KeyError, TypeError)

    def __init__(
        self, sdk: Any, model: str, api_key: str | None, base_url: str | None,
        timeout_s: float, stream: bool,
    ) -> None:  # fmt: skip
        check_adapter(model, timeout_s, self.example)
        self._sdk = sdk
        self._model = model
        self._key = api_key or os.environ.get(self.key_env) or "no-key"
        self.base_url = base_url or os.environ.get(self.base_url_env)
        self.timeout_s = timeout_s
        self.stream = stream

    @property
    def name(self) -> str:
        return self._model

    def __repr__(self) -> str:  # never the key
        return f"{type(self).__name__}({self._model!r}, base_url={self.base_url!r})"

    async def complete(self, request: ModelRequest, on_text: TextSink | None = None) -> ModelReply:
        """The model's reply (see `dagnats.llm.model.Model.complete`)."""
        call = self._streamed(request, on_text) if self.stream else self._whole(request)
        return await sdk_call(
            call, self._sdk, model=self._model, timeout_s=self.timeout_s, secrets=(self._key,),
            malformed=self.malformed,
        )  # fmt: skip

    async def _whole(self, request: ModelRequest) -> ModelReply:
        raise NotImplementedError

    async def _streamed(self, request: ModelRequest, on_text: TextSink | None) -> ModelReply:
        raise NotImplementedError
