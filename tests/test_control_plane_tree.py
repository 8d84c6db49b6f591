"""Quotas per ROOT run (kernel/control.py, steps/agent_control.py): a descendant's child run
request is asked of the root, decided on the root's counters of its whole tree, and answered;
the answer is the requesting agent's tool result. Given/when/then on one run, then a tree of
runs routed in memory (tests/control_tree.py) and a hypothesis property over it."""

from __future__ import annotations

from typing import Any

import msgspec
from hypothesis import given as hypothesis_given
from hypothesis import settings
from hypothesis import strategies as st

from kernel.commands import AnswerChild, AskChild, ReleaseChild, StartRun
from kernel.control import CHILD_TOOL, child_id, control_of
from kernel.effects import SendCommand, StartChild
from kernel.events import (
    AgentToolCompleted,
    ControlChildAsked,
    ControlChildRefused,
    ControlChildStarted,
    ControlTreeGranted,
    ControlTreeRefused,
    ControlTreeReleased,
)
from kernel.react import resume
from kernel.workflow import parse_workflow
from tests.control_tree import DONE, ROOT, Tree, agent_doc, root_workflow, spawn
from tests.kernel_dsl import complete, given

KID = parse_workflow(agent_doc("kid", 1))


def descendant() -> StartRun:
    return StartRun(
        run_id="kid1", at_ms=0, workflow=KID, depth=1, parent_run_id=ROOT,
        parent_step_id="a", control_root=ROOT, control_root_step="a",
    )  # fmt: skip


def of(events: tuple[Any, ...], kind: type[Any]) -> list[Any]:
    return [event for event in events if isinstance(event, kind)]


def test_a_descendants_request_is_recorded_and_asked_of_the_root_not_started() -> None:
    turn = given(descendant()).when(complete("a.turn1", spawn(1, 1), run_id="kid1"))
    child = child_id("kid1", "a", 1, 0)
    [asked] = of(turn.events, ControlChildAsked)
    assert (asked.child_run_id, asked.root_run_id) == (child, ROOT)
    assert not of(turn.events, ControlChildStarted)
    [send] = [e for e in turn.effects if isinstance(e, SendCommand)]
    assert isinstance(send.command, AskChild) and send.msg_id.startswith(f"ask:{child}~")
    assert (send.command.run_id, send.command.step_id, send.command.generation) == (ROOT, "a", 2)
    assert not [e for e in turn.effects if isinstance(e, StartChild)]
    assert control_of(turn.state).asking[0].child_run_id == child


def _root_with_one_child(max_active: int) -> tuple[Any, ...]:
    """The root's agent started one child of its own and waits for it."""
    return (
        StartRun(run_id=ROOT, at_ms=0, workflow=root_workflow(max_active)),
        complete("a.turn1", spawn(1, 1), run_id=ROOT),
    )


def ask(child: str = "grandkid", writes: bool = True) -> AskChild:
    return AskChild(
        run_id=ROOT, at_ms=0, step_id="a", child_run_id=child, requester_run_id="kid1",
        requester_step_id="a", turn=1, index=0, generation=2, writes=writes,
    )  # fmt: skip


def test_the_root_refuses_a_grandchild_when_its_own_child_uses_the_trees_quota() -> None:
    root = _root_with_one_child(max_active=1)
    then = given(*root).when(ask())
    [refused] = of(then.events, ControlTreeRefused)
    assert refused.rule == "child_runs.max_active" and "root run 'root'" in refused.message
    [send] = [e for e in then.effects if isinstance(e, SendCommand)]
    assert isinstance(send.command, AnswerChild) and not send.command.granted
    assert send.command.run_id == "kid1" and send.command.rule == "child_runs.max_active"


def test_the_root_grants_while_the_tree_has_room_and_counts_a_duplicate_ask_once() -> None:
    root = _root_with_one_child(max_active=2)
    granted = given(*root).when(ask())
    assert of(granted.events, ControlTreeGranted)
    assert len(control_of(granted.state).tree_active) == 1
    again = given(*root, *granted.events).when(ask())
    assert again.events == ()  # a repeated ask decides nothing...
    resumed = [e for e in resume(granted.state) if isinstance(e, SendCommand)]
    answers = [e.command for e in resumed if isinstance(e.command, AnswerChild)]
    assert [(a.child_run_id, a.granted) for a in answers] == [
        ("grandkid", True)
    ]  # ...resume answers
    full = given(*root, *granted.events).when(ask("other"))
    assert of(full.events, ControlTreeRefused)
    release = ReleaseChild(run_id=ROOT, at_ms=0, step_id="a", child_run_id="grandkid")
    freed = given(*root, *granted.events).when(release)
    assert of(freed.events, ControlTreeReleased)
    assert control_of(freed.state).tree_active == ()


def _asked() -> Any:
    return given(descendant()).when(complete("a.turn1", spawn(1, 1), run_id="kid1"))


def answer(granted: bool) -> AnswerChild:
    return AnswerChild(
        run_id="kid1", at_ms=0, step_id="a", child_run_id=child_id("kid1", "a", 1, 0), turn=1,
        index=0, granted=granted, rule="" if granted else "child_runs.max_active",
        message="" if granted else "child run refused: the quota is 1 (child_runs.max_active)",
    )  # fmt: skip


def test_a_refusing_answer_is_the_agents_tool_result() -> None:
    asked = _asked()
    then = given(descendant(), *asked.events).when(answer(False))
    [refused] = of(then.events, ControlChildRefused)
    assert refused.rule == "child_runs.max_active"
    [result] = of(then.events, AgentToolCompleted)
    assert not result.ok and result.error is not None and "quota is 1" in result.error.message
    assert control_of(then.state).asking == ()
    duplicate = given(descendant(), *asked.events, *then.events).when(answer(False))
    assert not of(duplicate.events, ControlChildRefused)  # a second answer decides nothing


def test_a_granting_answer_starts_the_child_under_the_same_root() -> None:
    asked = _asked()
    then = given(descendant(), *asked.events).when(answer(True))
    [started] = of(then.events, ControlChildStarted)
    assert started.child_run_id == child_id("kid1", "a", 1, 0)
    [start] = [e for e in then.effects if isinstance(e, StartChild)]
    assert (start.control_root, start.control_root_step, start.depth) == (ROOT, "a", 2)


# -- a tree of runs ------------------------------------------------------------------------


def test_a_grandchild_is_refused_because_the_roots_quota_is_used_up() -> None:
    tree = Tree(root_workflow(max_active=2))
    tree.settle()
    tree.answer_turn(ROOT, spawn(2, 2))  # the root's two children use the tree's quota
    kids = tree.running_children()
    assert len(kids) == 2
    tree.answer_turn(kids[0], spawn(1, 2))  # the child's own quota (2) has room; the root's not
    refused = [e for e in tree.histories[kids[0]] if isinstance(e, ControlChildRefused)]
    assert [e.rule for e in refused] == ["child_runs.max_active"]
    assert len(tree.running_children()) == 2
    assert [e for e in tree.histories[ROOT] if isinstance(e, ControlTreeRefused)]
    tree.answer_turn(kids[1], DONE)  # one ends: room for one grandchild
    tree.answer_turn(kids[0], spawn(1, 2))
    assert len(tree.running_children()) == 2
    assert len(control_of(tree.states[ROOT]).tree_active) == 1


Action = tuple[int, int]  # (which waiting turn, children asked: 0..2, 3 = done)


@settings(max_examples=60, deadline=None)
@hypothesis_given(
    max_active=st.integers(min_value=1, max_value=4),
    actions=st.lists(
        st.tuples(st.integers(min_value=0, max_value=20), st.integers(min_value=0, max_value=3)),
        max_size=25,
    ),
)
def test_no_tree_ever_runs_more_children_than_its_roots_quota_and_replay_equals_live(
    max_active: int, actions: list[Action]
) -> None:
    tree = Tree(root_workflow(max_active))
    tree.settle()
    for pick, asked in actions:
        waiting = sorted(tree.turns)
        if not waiting:
            break
        run_id = waiting[pick % len(waiting)]
        tree.answer_turn(run_id, DONE if asked == 3 else spawn(asked, max_active))
        running = tree.running_children()
        assert len(running) <= max_active, (running, max_active)
        root = control_of(tree.states[ROOT])
        counted = len(root.tree_active) + sum(1 for c in root.active)
        assert counted >= len(running)  # every running child is counted at the root
    for run_id in tree.histories:
        assert msgspec.json.encode(tree.replayed(run_id)) == msgspec.json.encode(
            tree.states[run_id]
        )
    assert CHILD_TOOL  # the reserved tool name the turns use
