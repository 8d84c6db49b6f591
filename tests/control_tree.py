"""An in-memory tree of runs for the control plane's quotas per root run (kernel/control.py):
each run decided by the pure kernel, its effects routed to the other runs as the shell would
(`StartChild` -> `StartRun`, `SendCommand` -> its command, `ReportToParent` -> `RecordChild`,
`CancelChild` -> `CancelRun`), and agent turns answered by the test. No NATS: the kernel alone.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import msgspec

from kernel.commands import (
    AnyCommand,
    CancelRun,
    CompleteTask,
    Rejection,
    StartRun,
)
from kernel.commands import RecordChild as RecordChildCommand
from kernel.control import CHILD_TOOL
from kernel.decide import decide
from kernel.effects import (
    CancelChild,
    EnqueueTask,
    ReportToParent,
    SendCommand,
    StartChild,
)
from kernel.events import AnyEvent
from kernel.react import react
from kernel.reducer import evolve, fold
from kernel.state import RunState
from kernel.workflow import WorkflowDef, parse_workflow

ROOT = "root"


def agent_doc(name: str, max_active: int, *, allow: bool = True) -> dict[str, Any]:
    return {
        "name": name,
        "steps": [{"id": "a", "type": "agent_loop", "task": "think", "config": {"tools": {}}}],
        "child_runs": {"allow": allow, "max_active": max_active, "max_generations": 3},
    }


def spawn(count: int, max_active: int) -> dict[str, Any]:
    """A turn that asks for `count` child runs of a written agent workflow."""
    calls = [
        {
            "name": CHILD_TOOL,
            "id": f"c{index}",
            "arguments": {"definition": agent_doc("kid", max_active), "input": None},
        }
        for index in range(count)
    ]
    return {"agent": "continue", "state": {}, "tool_calls": calls}


DONE: dict[str, Any] = {"agent": "done", "output": {"ok": True}}


class Tree:
    """Runs by id, their histories, the commands in flight, and the agent turns waiting."""

    def __init__(self, root: WorkflowDef) -> None:
        self.clock = 1_000
        self.histories: dict[str, list[AnyEvent]] = {}
        self.states: dict[str, RunState] = {}
        self.turns: dict[str, EnqueueTask] = {}  # run id -> its agent's turn task waiting
        self.queue: deque[AnyCommand] = deque()
        self.record: list[tuple[AnyCommand | None, tuple[AnyEvent, ...]]] | None = None
        self.send(StartRun(run_id=ROOT, at_ms=0, workflow=root))

    def send(self, command: AnyCommand) -> None:
        self.queue.append(command)

    def settle(self, limit: int = 10_000) -> None:
        """Decide every command in flight, and those they cause, in order."""
        for _ in range(limit):
            if not self.queue:
                return
            self._decide(self.queue.popleft())
        raise AssertionError("the tree did not settle")

    def answer_turn(self, run_id: str, output: dict[str, Any]) -> None:
        task = self.turns.pop(run_id)
        self.send(
            CompleteTask(
                run_id=run_id, at_ms=0, step_id=task.step_id, attempt=task.attempt,
                output=msgspec.Raw(msgspec.json.encode(output)),
            )
        )  # fmt: skip
        self.settle()

    def _decide(self, command: AnyCommand) -> None:
        self.clock += 1
        command = msgspec.structs.replace(command, at_ms=self.clock)
        state = self.states.get(command.run_id, RunState(run_id=command.run_id))
        decided = decide(state, command)
        if isinstance(decided, Rejection):
            return
        if self.record is not None and decided:
            self.record.append((command, decided))
        history = self.histories.setdefault(command.run_id, [])
        for event in decided:
            state = evolve(state, event)
            history.append(event)
            self.states[command.run_id] = state
            for effect in react(state, event):
                self._route(effect)

    def _route(self, effect: object) -> None:
        match effect:
            case EnqueueTask() if effect.task == "think":
                self.turns[effect.run_id] = effect
            case StartChild():
                assert effect.definition is not None
                self.send(
                    StartRun(
                        run_id=effect.child_run_id, at_ms=0, workflow=effect.definition,
                        input=effect.input, parent_run_id=effect.run_id,
                        parent_step_id=effect.step_id, depth=effect.depth,
                        control_root=effect.control_root or msgspec.UNSET,
                        control_root_step=effect.control_root_step or msgspec.UNSET,
                    )
                )  # fmt: skip
            case SendCommand():
                self.send(effect.command)
            case ReportToParent():
                self.send(
                    RecordChildCommand(
                        run_id=effect.parent_run_id, at_ms=0, step_id=effect.parent_step_id,
                        child_run_id=effect.run_id, status=effect.status,
                        output=effect.output, error=effect.error,
                    )
                )  # fmt: skip
            case CancelChild():
                self.send(CancelRun(run_id=effect.child_run_id, at_ms=0, reason=effect.reason))

    def running_children(self) -> list[str]:
        """Runs of the tree (not the root) that are running now."""
        return [
            run_id
            for run_id, state in self.states.items()
            if run_id != ROOT and state.status == "running"
        ]

    def replayed(self, run_id: str) -> RunState:
        return fold(self.histories[run_id])


def root_workflow(max_active: int) -> WorkflowDef:
    return parse_workflow(agent_doc("boss", max_active))


def tree_history() -> tuple[tuple[AnyCommand | None, tuple[AnyEvent, ...]], ...]:
    """Decisions of a tree where a grandchild is refused by the root's quota, then one is
    granted and released: every event and command of the quotas per root run."""
    tree = Tree(root_workflow(max_active=2))
    decisions: list[tuple[AnyCommand | None, tuple[AnyEvent, ...]]] = []
    tree.record = decisions
    tree.settle()
    tree.answer_turn(ROOT, spawn(2, 2))
    first, second = sorted(tree.running_children())
    tree.answer_turn(first, spawn(1, 2))  # refused: the tree is full
    tree.answer_turn(second, DONE)
    tree.answer_turn(first, spawn(1, 2))  # granted
    grandchild = next(r for r in tree.running_children() if r not in (first, second))
    tree.answer_turn(grandchild, DONE)  # released
    return tuple(decisions)
