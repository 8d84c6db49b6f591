"""The trace of one seed: what each process did, which faults struck, what was appended.

Entries are recorded cheaply (a tuple; an append keeps its payload, a text may be a function
that makes it) and formatted only when a report asks for them, one line each: `+<virtual ms>
<actor>: <what>`. At most `settings.trace_entries_max` entries are kept (the first ones: a seed
replays exactly, so a longer look is one `--seed N --trace` away).
"""

from __future__ import annotations

from collections.abc import Callable

from dagnats.sim import settings
from dagnats.sim.memory import HistoryMessage
from dagnats.sim.memory_queue import MemoryMessage
from kernel import codec
from kernel.admission import is_gate_id
from kernel.errors import DecodeError
from kernel.events import AnyEvent, event_tag

Text = str | Callable[[], str]  # (a function: called only when the trace is read)
Entry = tuple[int, str, Text | HistoryMessage]


class Trace:
    __slots__ = ("entries", "truncated")

    def __init__(self) -> None:
        self.entries: list[Entry] = []
        self.truncated = False

    def add(self, at_ms: int, actor: str, text: Text) -> None:
        if len(self.entries) < settings.trace_entries_max:
            self.entries.append((at_ms, actor, text))
        else:
            self.truncated = True

    def add_append(self, at_ms: int, actor: str, message: HistoryMessage) -> None:
        if len(self.entries) < settings.trace_entries_max:
            self.entries.append((at_ms, actor, message))
        else:
            self.truncated = True

    def lines(self, start_ms: int) -> tuple[str, ...]:
        """Every entry as a line, times relative to `start_ms`."""
        lines = [
            f"+{at_ms - start_ms}ms {actor}: {_text(what)}" for at_ms, actor, what in self.entries
        ]
        if self.truncated:
            lines.append(f"... (trace cut at {settings.trace_entries_max} entries)")
        return tuple(lines)


def _text(what: Text | HistoryMessage) -> str:
    if isinstance(what, str):
        return what
    if not isinstance(what, HistoryMessage):
        return what()
    if is_gate_id(what.run_id):
        return f"appends #{what.seq} to gate {what.run_id}"
    try:
        decision = codec.decode_decision(what.payload)
    except DecodeError as error:
        return f"appends #{what.seq} to {what.run_id}: undecodable ({error})"
    command = type(decision.command).__name__
    events = "; ".join(describe_event(event) for event in decision.events)
    return f"appends #{what.seq} to {what.run_id}: {command} -> {events}"


def describe_batch(messages: list[MemoryMessage]) -> str:
    """`takes command(s) #3, #4`: what an engine step took from the command queue."""
    numbers = ", ".join(f"#{m.entry.number}" for m in messages)
    return f"takes command(s) {numbers}"


def describe_event(event: AnyEvent) -> str:
    """`step.completed s1#2` style: the tag, then the step and attempt when it has them."""
    tag = event_tag(type(event))
    step_id = getattr(event, "step_id", None)
    if step_id is None:
        status = getattr(event, "status", None)
        return f"{tag} {status}" if isinstance(status, str) else tag
    attempt = getattr(event, "attempt", None)
    return f"{tag} {step_id}#{attempt}" if isinstance(attempt, int) else f"{tag} {step_id}"
