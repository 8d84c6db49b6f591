"""The state of dynamic steps: what a run gained while it ran. Frozen values only.

Two shapes, both held in `RunState.dynamic`:

- A *parent* (a planner) whose plan was appended to the run as ordinary steps with namespaced
  ids `<parent>.<id>`. Its record names its children; the children live in `RunState.steps`
  like any other step, so every generic rule runs them.
- A *map*, whose items are not steps: its `MapState` keeps the item inputs once (never updated),
  the item states in fixed-size chunks (an update copies one chunk and the chunk index, not
  every item), and counters, so one item's event costs O(chunk) however many items there are.

An *agent loop*'s `AgentState` (kernel.agent_state) lives here too, beside the maps.

This module may import only `kernel.events`, `kernel.agent_state` and msgspec (`kernel.state`
imports it).
"""

from __future__ import annotations

from typing import Final, Literal

import msgspec

from kernel.agent_state import AgentState
from kernel.events import NULL, ErrorInfo

ITEMS_PER_CHUNK: Final = 256

ItemStatus = Literal["pending", "scheduled", "retry_wait", "completed", "failed"]


class MapItem(msgspec.Struct, frozen=True, kw_only=True):
    """One item of a map: its attempt, like a step's, and its result once it has one."""

    status: ItemStatus = "pending"
    attempt: int = 0
    output: msgspec.Raw = NULL
    error: ErrorInfo | None = None
    deadline_ms: int | None = None
    retry_at_ms: int | None = None


PENDING_ITEM: Final = MapItem()


class MapState(msgspec.Struct, frozen=True, kw_only=True):
    """The items of a map step's attempt, in input order.

    `next_index` is the first item never scheduled (items start in input order); `active`
    counts items scheduled or waiting to retry (never above the map's `max_concurrency`).
    """

    step_id: str
    attempt: int
    items: tuple[msgspec.Raw, ...] = ()
    chunks: tuple[tuple[MapItem, ...], ...] = ()
    next_index: int = 0
    active: int = 0
    completed: int = 0
    failed: int = 0

    @property
    def count(self) -> int:
        return len(self.items)

    @property
    def done(self) -> int:
        """Items that ended (completed, or failed for good)."""
        return self.completed + self.failed

    def item(self, index: int) -> MapItem:
        """The state of item `index` (0-based)."""
        assert 0 <= index < len(self.items), f"map {self.step_id!r} has no item {index}"
        return self.chunks[index // ITEMS_PER_CHUNK][index % ITEMS_PER_CHUNK]

    def with_item(self, index: int, item: MapItem) -> MapState:
        """This map with item `index` replaced (one chunk is copied)."""
        chunk_index, offset = divmod(index, ITEMS_PER_CHUNK)
        chunk = self.chunks[chunk_index]
        new_chunk = (*chunk[:offset], item, *chunk[offset + 1 :])
        chunks = (*self.chunks[:chunk_index], new_chunk, *self.chunks[chunk_index + 1 :])
        return msgspec.structs.replace(self, chunks=chunks)


def new_map(step_id: str, attempt: int, items: tuple[msgspec.Raw, ...]) -> MapState:
    """A map whose items are all pending."""
    full, rest = divmod(len(items), ITEMS_PER_CHUNK)
    chunks: list[tuple[MapItem, ...]] = [(PENDING_ITEM,) * ITEMS_PER_CHUNK] * full
    if rest:
        chunks.append((PENDING_ITEM,) * rest)
    return MapState(step_id=step_id, attempt=attempt, items=items, chunks=tuple(chunks))


class DynamicParent(msgspec.Struct, frozen=True, kw_only=True):
    """A step that appends steps to its run (a planner): which attempt did, and its children.

    `previous_errors` are the problems of the plan rejected at `rejected_attempt`, shown to
    the next attempt's handler so it can fix its plan.
    """

    step_id: str
    attempt: int = 0  # the attempt whose plan was appended (0: none yet)
    children: tuple[str, ...] = ()
    rejected_attempt: int = 0
    previous_errors: tuple[str, ...] = ()


class DynamicState(msgspec.Struct, frozen=True, kw_only=True):
    """Every parent, map and agent loop of a run, and how many steps were appended (bounded
    per run)."""

    parents: tuple[DynamicParent, ...] = ()
    maps: tuple[MapState, ...] = ()
    steps_added: int = 0
    agents: tuple[AgentState, ...] = ()  # agent_loop steps (steps/agent_loop.py)


NO_DYNAMIC: Final = DynamicState()
