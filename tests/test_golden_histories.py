"""Golden histories: the exact bytes of recorded runs still decode, fold to the recorded final
state byte for byte, and re-deciding each recorded command gives the recorded events (audit).

The files are written once by `python -m tests.histories.make_golden`; a change that alters
how they fold shows as a diff of `<name>.expected.json` here, not as a silent rewrite.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from kernel.codec import CURRENT_VERSIONS, decode_decision, encode
from kernel.commands import Rejection
from kernel.decide import decide
from kernel.events import AnyEvent, Decision, event_tag
from kernel.reducer import fold, fold_from
from kernel.state import INITIAL_STATE, is_terminal
from tests.histories.make_golden import SCENARIOS

HISTORIES = Path(__file__).parent / "histories"
UPCAST_FIXTURES = frozenset({"v1_step_failed"})  # old bytes only, no run of their own
NAMES = sorted(path.name.removesuffix(".jsonl") for path in HISTORIES.glob("*.jsonl"))
GOLDEN = [name for name in NAMES if name not in UPCAST_FIXTURES]


def _decisions(name: str) -> list[tuple[bytes, Decision]]:
    lines = (HISTORIES / f"{name}.jsonl").read_bytes().splitlines()
    return [(line, decode_decision(line)) for line in lines]


def test_there_are_golden_histories_and_each_has_its_expected_state() -> None:
    assert len(GOLDEN) >= 4, NAMES
    assert set(GOLDEN) == set(SCENARIOS), "every scenario of make_golden has its file"
    for name in GOLDEN:
        assert (HISTORIES / f"{name}.expected.json").is_file(), f"{name}.expected.json missing"
    for name in UPCAST_FIXTURES:
        assert name in NAMES, f"{name}.jsonl missing"


@pytest.mark.parametrize("name", GOLDEN)
def test_each_line_is_one_decision_of_current_events(name: str) -> None:
    raw = (HISTORIES / f"{name}.jsonl").read_bytes()
    assert raw.endswith(b"\n") and b"\r" not in raw
    decisions = _decisions(name)
    assert len(decisions) == raw.count(b"\n") >= 3
    for _, decision in decisions:
        assert decision.events, "a history message holds at least one event"
        assert all(event.v == CURRENT_VERSIONS[event_tag(type(event))] for event in decision.events)


@pytest.mark.parametrize("name", GOLDEN)
def test_the_fold_equals_the_expected_state_byte_for_byte(name: str) -> None:
    events: list[AnyEvent] = [e for _, decision in _decisions(name) for e in decision.events]
    state = fold(events)
    expected = (HISTORIES / f"{name}.expected.json").read_bytes()
    assert encode(state) + b"\n" == expected, (
        f"the fold of {name}.jsonl changed:\n  now:      {encode(state).decode()}"
        f"\n  expected: {expected.decode()}"
    )
    assert is_terminal(state), f"{name} is a full run, so it ends"


@pytest.mark.parametrize("name", GOLDEN)
def test_folding_in_pieces_equals_folding_at_once(name: str) -> None:
    events: list[AnyEvent] = [e for _, decision in _decisions(name) for e in decision.events]
    whole = fold(events)
    for split in range(len(events) + 1):
        assert fold_from(fold(events[:split]), events[split:]) == whole


@pytest.mark.parametrize("name", GOLDEN)
def test_re_deciding_each_recorded_command_gives_the_recorded_events(name: str) -> None:
    state = INITIAL_STATE
    for index, (_, decision) in enumerate(_decisions(name)):
        decided = decide(state, decision.command)
        assert not isinstance(decided, Rejection), f"{name}:{index + 1}: {decided.message}"
        assert decided == decision.events, f"{name}:{index + 1}: decide no longer agrees"
        state = fold_from(state, decision.events)
        again = decide(state, decision.command)
        assert again == () or isinstance(again, Rejection), (
            f"{name}:{index + 1}: re-deciding a handled command must change nothing"
        )
