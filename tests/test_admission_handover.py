"""Continue-as-new hands its admission slot to the next run of its chain (kernel/admission.py,
`RequestAdmission.takes_over_from`): given/when/then examples, and a hypothesis property that
a chain never holds two slots of a gate and never loses the one it holds."""

from __future__ import annotations

from hypothesis import given as for_all
from hypothesis import settings
from hypothesis import strategies as st

from kernel.admission import (
    INITIAL_ADMISSION,
    AdmissionHandedOver,
    AdmissionState,
    AnyAdmissionCommand,
    ReleaseAdmission,
    RequestAdmission,
    check_gate,
    decide_admission,
    fold_admission,
    follow_ups,
    verdict,
)

GATE = "admission-test"


def request(run: str, limit: int = 1, takes_over_from: str = "") -> RequestAdmission:
    return RequestAdmission(
        gate_id=GATE, run_id=run, at_ms=1, limit=limit, takes_over_from=takes_over_from
    )


def release(run: str) -> ReleaseAdmission:
    return ReleaseAdmission(gate_id=GATE, run_id=run, at_ms=2)


def run_all(commands: list[AnyAdmissionCommand], state: AdmissionState = INITIAL_ADMISSION):  # type: ignore[no-untyped-def]
    for command in commands:
        state = fold_admission(state, decide_admission(state, command))
        check_gate(state)
    return state


def test_the_next_run_of_a_chain_takes_the_slot_ahead_of_the_queue() -> None:
    # given: a1 holds the only slot, b waits for it
    state = run_all([request("a1"), request("b")])
    # when: a1 continues as new as a2
    events = decide_admission(state, request("a2", takes_over_from="a1"))
    # then: the slot moves to a2 in one event; b still waits, nothing is granted or queued
    assert events == (AdmissionHandedOver(run_id="a2", at_ms=1, from_run_id="a1"),)
    after = fold_admission(state, events)
    assert after.holders == ("a2",) and [w.run_id for w in after.waiting] == ["b"]
    assert follow_ups(request("a2", takes_over_from="a1"), events).admit == ()
    # and a1's release afterwards (its run ended) frees nothing
    assert decide_admission(after, release("a1")) == ()
    assert verdict(after, "a1").outcome == "unknown"


def test_a_takeover_from_a_run_that_holds_no_slot_is_an_ordinary_request() -> None:
    state = run_all([request("a1"), release("a1"), request("b")])  # a1 released already
    events = decide_admission(state, request("a2", takes_over_from="a1"))
    assert not any(isinstance(e, AdmissionHandedOver) for e in events)
    assert verdict(fold_admission(state, events), "a2").outcome == "pending"


def test_a_repeated_takeover_decides_nothing() -> None:
    state = run_all([request("a1"), request("a2", takes_over_from="a1")])
    assert decide_admission(state, request("a2", takes_over_from="a1")) == ()


# -- the property: chains over one gate, interleaved with strangers --------------------------

Step = tuple[str, int]  # ("continue" | "end" | "stranger" | "release_stranger", which)


@settings(max_examples=300, deadline=None)
@for_all(
    limit=st.integers(1, 3),
    chains=st.integers(1, 4),
    steps=st.lists(
        st.tuples(st.sampled_from(["continue", "end", "stranger", "release"]), st.integers(0, 5)),
        max_size=40,
    ),
)
def test_a_chain_never_holds_two_slots_and_never_loses_one(
    limit: int, chains: int, steps: list[Step]
) -> None:
    current = {c: f"c{c}-0" for c in range(chains)}  # each chain's live run
    length = dict.fromkeys(range(chains), 0)
    ended: set[int] = set()
    strangers: list[str] = []
    state = run_all([request(current[c], limit) for c in range(chains)])
    for kind, which in steps:
        chain = which % chains
        before = state
        if kind == "continue" and chain not in ended:
            old = current[chain]
            length[chain] += 1
            current[chain] = f"c{chain}-{length[chain]}"
            state = run_all(
                [request(current[chain], limit, takes_over_from=old), release(old)], state
            )
            held_before = verdict(before, old).outcome
            # the new run is where the old one was: holding if it held, else asked anew
            if held_before == "admitted":
                assert verdict(state, current[chain]).outcome == "admitted"
        elif kind == "end" and chain not in ended:
            ended.add(chain)
            state = run_all([release(current[chain])], state)
        elif kind == "stranger":
            strangers.append(f"s{len(strangers)}")
            state = run_all([request(strangers[-1], limit)], state)
        elif kind == "release" and strangers:
            state = run_all([release(strangers[which % len(strangers)])], state)
        for c in range(chains):
            runs = {f"c{c}-{i}" for i in range(length[c] + 1)}
            held = [h for h in state.holders if h in runs]
            assert len(held) <= 1, f"chain {c} holds {held}"
            assert all(h == current[c] for h in held), "only the chain's live run holds"
        assert len(state.holders) <= limit
