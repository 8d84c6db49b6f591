"""Task tokens: a worker may report only the attempts it was given.

nats-server pins who may publish a result (the `worker` role, on `...<run>.result`), but a
subject cannot say which attempt a worker holds. So the engine signs each task message it
publishes: the `Dagnats-Task-Token` header is an HMAC of the attempt's key
(`<run>:<step>:<attempt>`, kernel/effects.attempt_key: its message id without the run's life
tag) under a secret derived from the engine's own credential. A worker copies the token of
the task it took onto every result of that attempt; the engine refuses (and sets aside as
`forbidden`) a result whose token is missing or wrong. A worker scoped to some task types can
fetch only those (its server permissions), so it can complete nothing else; a worker cannot
make up a result for a run it never served.

Engines that share a deployment share the engine credential, so they share the secret; an
engine with no credential (an open external NATS) neither signs nor checks.
"""

from __future__ import annotations

import hashlib
import hmac
from collections import OrderedDict
from typing import Final

from kernel.commands import AnyCommand, CompleteTask, FailTask, TaskStarted
from kernel.effects import attempt_key, attempt_key_of

TASK_TOKEN_HEADER: Final = "Dagnats-Task-Token"
_DERIVATION: Final = b"dagnats task tokens v1\x00"
token_hex_length: Final = 32  # 128 bits of the HMAC-SHA256: ample against guessing
signed_tokens_remembered_max: Final = 4_096  # tokens kept for the results that come back
_RESULTS: Final = (TaskStarted, CompleteTask, FailTask)  # (the commands a token must sign)


class TaskTokens:
    """Signs attempts' idempotency keys and checks the tokens results bring back."""

    def __init__(self, engine_secret: str) -> None:
        assert engine_secret, "an empty secret signs nothing"
        self._key = hashlib.sha256(_DERIVATION + engine_secret.encode()).digest()
        self._keyed = hmac.new(self._key, digestmod=hashlib.sha256)  # (copied per token)
        # The tokens signed last: a task's token is asked again when its result comes back.
        self._signed: OrderedDict[str, str] = OrderedDict()

    def sign(self, msg_id: str) -> str:
        """The token of the task published under `msg_id` (`<run>:<step>:<attempt>~<life>`):
        the HMAC of its attempt key (`<run>:<step>:<attempt>`), which a result names."""
        key = attempt_key_of(msg_id)
        token = self._signed.get(key)
        if token is None:
            signer = self._keyed.copy()  # (keyed once: a copy, not the key's set-up each)
            signer.update(key.encode())
            token = self._signed[key] = signer.hexdigest()[:token_hex_length]
            if len(self._signed) > signed_tokens_remembered_max:
                self._signed.popitem(last=False)
        return token

    def refusal(self, command: AnyCommand, token: str | None) -> str | None:
        """Why a result may not be decided (None: it may, or it is not a result). The
        reason's text is built only for a refusal (the accepted path formats nothing)."""
        if not isinstance(command, _RESULTS):
            return None
        if command.attempt < 1:
            return f"{_named(command)}: attempts start at 1"
        if not token:
            return f"{_named(command)} carries no task token: only its task's worker may report it"
        expected = self.sign(attempt_key(command.run_id, command.step_id, command.attempt))
        if not hmac.compare_digest(expected, token):
            return f"{_named(command)} carries another task's token: only its worker may report it"
        return None


def _named(command: TaskStarted | CompleteTask | FailTask) -> str:
    """`<Type> for run '<run>' step '<step>' attempt <n>`: the result a refusal names."""
    where = f"run {command.run_id!r} step {command.step_id!r} attempt {command.attempt}"
    return f"{type(command).__name__} for {where}"
