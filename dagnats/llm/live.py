"""Live output of a model call: text published on core NATS while it streams, never stored.

Subject `dagnats.live.<run_id>.<step_id>`; each message is JSON `{"step", "turn", "attempt",
"seq", "text"}`, and `{"end": true, ...}` closes a call. The worker role may publish there and
the client role subscribe (dagnats/runtime/roles.py). Whoever is not listening misses it:
history still records one `agent.turn.completed` per finished turn, with the whole reply.

`dagnats run wait` prints the text of the run's current turn as it arrives (`follow_live`).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any, Final

import msgspec

from dagnats.llm.model import TextSink
from dagnats.runtime import settings
from dagnats.worker_context import TaskContext

LIVE_PREFIX: Final = "dagnats.live"
live_text_bytes_max: Final = settings.llm_live_text_bytes_max


class LiveChunk(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    step: str
    turn: int = 0
    attempt: int = 0
    seq: int = 0
    text: str = ""
    end: bool = False


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(LiveChunk)


def live_subject(run_id: str, step_id: str) -> str:
    return f"{LIVE_PREFIX}.{run_id}.{step_id}"


class LiveSink:
    """Publishes one model call's text for the handler's step (nothing when the worker's
    connection cannot publish live, as in the simulator)."""

    def __init__(self, ctx: TaskContext) -> None:
        self.ctx = ctx
        self.subject = live_subject(ctx.run_id, ctx.step_id)
        self.seq = 0

    async def _publish(self, chunk: LiveChunk) -> None:
        publisher = self.ctx.live
        if publisher is None:
            return
        with contextlib.suppress(Exception):  # live output is best effort, never a failure
            await publisher.publish_live(self.subject, _encoder.encode(chunk))

    async def text(self, text: str) -> None:
        for start in range(0, max(len(text), 1), live_text_bytes_max // 4):
            piece = text[start : start + live_text_bytes_max // 4]
            if not piece:
                return
            self.seq += 1
            await self._publish(self.chunk(text=piece))

    async def end(self) -> None:
        self.seq += 1
        await self._publish(self.chunk(end=True))

    def chunk(self, *, text: str = "", end: bool = False) -> LiveChunk:
        ctx = self.ctx
        return LiveChunk(step=ctx.step_id, turn=ctx.turn, attempt=ctx.attempt, seq=self.seq,
                         text=text, end=end)  # fmt: skip

    @property
    def sink(self) -> TextSink | None:
        return self.text if self.ctx.live is not None else None


live_text_shown_chars_max: Final = settings.llm_live_text_shown_chars_max


class LiveText:
    """The text of the call being streamed now (the last `live_text_shown_chars_max`
    characters), for a display; `changed` tells whether a new call began."""

    def __init__(self) -> None:
        self.key: tuple[str, int, int] = ("", 0, 0)
        self.text = ""

    def add(self, chunk: LiveChunk) -> bool:
        """Take `chunk`; True when it starts a new call (another step, turn or attempt)."""
        key = (chunk.step, chunk.turn, chunk.attempt)
        started = key != self.key
        if started:
            self.key, self.text = key, ""
        self.text = (self.text + chunk.text)[-live_text_shown_chars_max:]
        return started

    def title(self) -> str:
        step, turn, attempt = self.key
        return f"{step} (turn {turn}, attempt {attempt})"


def decode_chunk(data: bytes) -> LiveChunk | None:
    """A live message, or None for one this version cannot read."""
    try:
        return _decoder.decode(data)
    except msgspec.DecodeError:
        return None


@contextlib.asynccontextmanager
async def follow_live(
    nc: Any, run_id: str, on_chunk: Callable[[LiveChunk], None]
) -> AsyncIterator[None]:
    """Call `on_chunk` for each live message of run `run_id` while the block runs."""

    async def handle(message: Any) -> None:
        chunk = decode_chunk(message.data)
        if chunk is not None:
            on_chunk(chunk)

    if not run_id or any(c in run_id for c in " \t\r\n.*>"):
        yield  # not a run id a subject can carry: the caller's own call says what is wrong
        return
    subscription = await nc.subscribe(f"{LIVE_PREFIX}.{run_id}.>", cb=handle)
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            await subscription.unsubscribe()
