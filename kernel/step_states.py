"""The state each step type keeps in a run: frozen values only, formats without behaviour.

Held in `RunState.dynamic` (appended steps, maps, agent loops) and `RunState.approvals`:

- `DynamicParent`: a step that appended steps to its run (a planner); the appended steps
  (ids `<parent>.<id>`) live in `RunState.steps` like any other, so every run rule runs them.
- `MapState`: a map's items, which are not steps; inputs kept once, item states in fixed-size
  chunks (an update copies one chunk, not every item), and counters.
- `AgentState`: an agent loop's turns, tool calls and usage.
- `ApprovalState`: an approval asked by a step (an `approval` step, or an agent's tool call).

The behaviour that reads and writes these lives in the step modules (`steps/`); this module is
part of the storage contract (snapshots encode `RunState`). It may import only
`kernel.events` and msgspec (`kernel.state` imports it).
"""

from __future__ import annotations

from typing import Any, Final, Literal

import msgspec

from kernel.events import NULL, ErrorInfo

AgentPhase = Literal[
    "turn",  # turn `turn`, attempt `turn_attempt`, is out to a worker
    "turn_retry",  # attempt `turn_attempt + 1` of turn `turn` waits for its retry timer
    "tools",  # turn `turn` completed; its tool calls run
    "delay",  # turn `turn` and its tools are done; the loop delay runs before the next turn
    "ended",  # done, failed, or stopped at a limit
]
ToolStatus = Literal["pending", "scheduled", "retry_wait", "completed"]


class ToolState(msgspec.Struct, frozen=True, kw_only=True):
    """One tool call of the latest turn; `completed` holds its result, failures included."""

    call_id: str
    name: str
    task: str  # the worker task that runs it ("" for a tool the loop does not know)
    arguments: msgspec.Raw = NULL
    status: ToolStatus = "pending"
    attempt: int = 0
    deadline_ms: int | None = None
    retry_at_ms: int | None = None
    lost_attempts: int = 0  # attempts whose worker vanished (agent.tool.lost)
    ok: bool = False
    output: msgspec.Raw = NULL
    error: ErrorInfo | None = None


class AgentState(msgspec.Struct, frozen=True, kw_only=True):
    """An agent loop's progress: the turn in hand, the state carried between turns, the tool
    calls of the latest turn, and the usage counters the limits are checked against."""

    step_id: str
    started_at_ms: int
    phase: AgentPhase = "turn"
    turn: int = 1
    turn_attempt: int = 1
    turn_deadline_ms: int | None = None
    turn_retry_at_ms: int | None = None
    turn_lost_attempts: int = 0  # attempts of the turn in hand whose worker vanished
    delay_until_ms: int | None = None
    state: msgspec.Raw = NULL  # what the latest turn carried over (null before the first)
    tools: tuple[ToolState, ...] = ()
    carried_tool_results: msgspec.Raw = NULL  # turn 1's, from a run continued as new
    turns_completed: int = 0
    tool_calls: int = 0  # over all turns
    tokens_in: int = 0
    tokens_out: int = 0
    cost: float = 0.0

    @property
    def tools_done(self) -> bool:
        return all(tool.status == "completed" for tool in self.tools)

    def with_tool(self, index: int, tool: ToolState) -> AgentState:
        """This state with tool call `index` of the latest turn replaced."""
        assert 0 <= index < len(self.tools), f"{self.step_id!r} has no tool call {index}"
        tools = (*self.tools[:index], tool, *self.tools[index + 1 :])
        return msgspec.structs.replace(self, tools=tools)


class ApprovalState(msgspec.Struct, frozen=True, kw_only=True):
    """One approval of the run (steps/approvals.py): asked, and how it was resolved."""

    key: str
    step_id: str
    attempt: int
    question: str
    description: str = ""
    metadata: msgspec.Raw = msgspec.Raw(b"{}")
    requested_at_ms: int
    deadline_ms: int | None = None
    on_timeout: str = "fail"
    decision: str = ""  # "" while pending, then "approve" or "reject"
    by: str = ""
    comment: str = ""
    data: msgspec.Raw = NULL
    timed_out: bool = False
    resolved_at_ms: int | None = None


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
    lost_attempts: int = 0  # attempts whose worker vanished (map.item.lost)


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
        # a list copy, one slot set, back to a tuple: two copies in C, no slices to unpack
        new_chunk = list(self.chunks[chunk_index])
        new_chunk[offset] = item
        chunks = list(self.chunks)
        chunks[chunk_index] = tuple(new_chunk)
        return msgspec.structs.replace(self, chunks=tuple(chunks))


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


class ActiveChild(msgspec.Struct, frozen=True, kw_only=True):
    """A child run an agent started (kernel/control.py) that has not reported its end: the
    tool call it answers (`step_id`, `turn`, `index`), and what starts it again on resume."""

    child_run_id: str
    step_id: str
    turn: int
    index: int
    workflow: str  # a registered workflow's name, or the name of `definition`
    definition: msgspec.Raw = NULL  # the workflow the agent wrote (null: a registered one)
    input: msgspec.Raw = NULL
    at_ms: int


class TreeChild(msgspec.Struct, frozen=True, kw_only=True):
    """A child run a descendant's agent started, counted by the root run against its quotas
    until the descendant reports the child's end (kernel/control.py)."""

    child_run_id: str
    requester_run_id: str
    requester_step_id: str
    turn: int
    index: int
    writes: bool = False  # of a definition the agent wrote
    rule: str = ""  # a refusal's quota (kept in `TreeState.refused`; empty: granted)
    message: str = ""
    at_ms: int


class TreeState(msgspec.Struct, frozen=True, kw_only=True):
    """Quotas per root run (kernel/control.py). A descendant: its `root_run_id` and the root's
    agent loop `root_step_id`, and its requests waiting for the root's verdict (`asking`). The
    root: the descendants' children it counts (`active`), their definitions written, and the
    times of their starts within the last `limits.control_window_ms`."""

    root_run_id: str = ""
    root_step_id: str = ""
    asking: tuple[ActiveChild, ...] = ()
    active: tuple[TreeChild, ...] = ()
    definitions: int = 0
    recent_ms: tuple[int, ...] = ()
    refused: tuple[TreeChild, ...] = ()  # the latest `limits.control_tree_refusals_kept`


NO_TREE: Final = TreeState()


class ControlState(msgspec.Struct, frozen=True, kw_only=True):
    """The control plane's counters of one run, checked against its `child_runs` quotas:
    children running now, definitions written, every start so far, and the times of the
    starts within the last `limits.control_window_ms` (bounded by the per-minute quota)."""

    active: tuple[ActiveChild, ...] = ()
    started: int = 0
    definitions: int = 0
    refused: int = 0
    recent_starts_ms: tuple[int, ...] = ()
    # quotas per root run (kernel/control.py); unset (not encoded) until the run has a root or
    # a descendant asks it
    tree: TreeState | msgspec.UnsetType = msgspec.UNSET

    def tree_state(self) -> TreeState:
        return NO_TREE if isinstance(self.tree, msgspec.UnsetType) else self.tree

    def with_tree(self, **changes: Any) -> ControlState:
        return msgspec.structs.replace(
            self, tree=msgspec.structs.replace(self.tree_state(), **changes)
        )

    @property
    def root_run_id(self) -> str:
        return self.tree_state().root_run_id

    @property
    def root_step_id(self) -> str:
        return self.tree_state().root_step_id

    @property
    def asking(self) -> tuple[ActiveChild, ...]:
        return self.tree_state().asking

    @property
    def tree_active(self) -> tuple[TreeChild, ...]:
        return self.tree_state().active

    @property
    def tree_definitions(self) -> int:
        return self.tree_state().definitions

    @property
    def tree_recent_ms(self) -> tuple[int, ...]:
        return self.tree_state().recent_ms


NO_CONTROL: Final = ControlState()


class DynamicState(msgspec.Struct, frozen=True, kw_only=True):
    """Every parent, map and agent loop of a run, and how many steps were appended (bounded
    per run)."""

    parents: tuple[DynamicParent, ...] = ()
    maps: tuple[MapState, ...] = ()
    steps_added: int = 0
    agents: tuple[AgentState, ...] = ()  # one per agent loop step that started
    # the child runs its agents started (kernel/control.py); unset (not encoded) until one
    control: ControlState | msgspec.UnsetType = msgspec.UNSET


NO_DYNAMIC: Final = DynamicState()
