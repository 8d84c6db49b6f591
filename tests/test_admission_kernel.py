"""The admission gate's pure rules (kernel/admission.py) and a run's held states
(kernel/admission_run.py): given/when/then examples and hypothesis properties per rule."""

from __future__ import annotations

from hypothesis import given as for_all
from hypothesis import settings
from hypothesis import strategies as st

from kernel.admission import (
    INITIAL_ADMISSION,
    AdmissionGranted,
    AdmissionQueued,
    AdmissionSkipped,
    AnyAdmissionCommand,
    ReleaseAdmission,
    RequestAdmission,
    check_gate,
    decide_admission,
    fold_admission,
    verdict,
)
from kernel.commands import AdmissionVerdict, StartGated
from kernel.events import RunCancelled, RunFailed, RunQueued, RunStarted, StepScheduled
from tests.histories.admission_scenarios import gated
from tests.kernel_dsl import given

GATE = "admission-test"


def request(run: str, limit: int = 1, mode: str = "queue", priority: int = 0) -> RequestAdmission:
    return RequestAdmission(
        gate_id=GATE, run_id=run, at_ms=1, limit=limit, mode=mode,  # type: ignore[arg-type]
        priority=priority,
    )  # fmt: skip


def release(run: str) -> ReleaseAdmission:
    return ReleaseAdmission(gate_id=GATE, run_id=run, at_ms=2)


def run_all(commands: list[AnyAdmissionCommand]):  # type: ignore[no-untyped-def]
    state = INITIAL_ADMISSION
    for command in commands:
        state = fold_admission(state, decide_admission(state, command))
        check_gate(state)
    return state


def test_the_second_request_waits_and_is_granted_when_the_first_is_released() -> None:
    state = run_all([request("a"), request("b")])
    assert verdict(state, "a").outcome == "admitted"
    assert verdict(state, "b").outcome == "pending"
    events = decide_admission(state, release("a"))
    assert [type(e) for e in events][-1] is AdmissionGranted and events[-1].run_id == "b"


def test_priority_orders_the_queue_fifo_within_a_priority() -> None:
    state = run_all([request("h"), request("x", priority=1), request("y", priority=5),
                     request("z", priority=1)])  # fmt: skip
    assert [w.run_id for w in state.waiting] == ["y", "x", "z"]


def test_skip_names_the_holder_and_a_repeated_request_decides_nothing() -> None:
    state = run_all([request("a", mode="skip"), request("b", mode="skip")])
    assert verdict(state, "b") == AdmissionVerdict(
        outcome="skipped", gate_id=GATE, holder_run_id="a"
    )
    assert decide_admission(state, request("b", mode="skip")) == ()
    assert any(isinstance(e, AdmissionSkipped) for e in decide_admission(
        run_all([request("a", mode="skip")]), request("c", mode="skip")))  # fmt: skip


def test_cancel_previous_evicts_the_holder_and_admits_the_new_run() -> None:
    state = run_all([request("a", mode="cancel_previous"), request("b", mode="cancel_previous")])
    assert state.holders == ("b",)


def test_a_pending_run_released_leaves_the_queue() -> None:
    state = run_all([request("a"), request("b"), release("b")])
    assert state.waiting == () and state.holders == ("a",)
    assert not any(isinstance(e, AdmissionQueued) for e in decide_admission(state, release("b")))


commands = st.lists(
    st.one_of(
        st.builds(request, st.sampled_from("abcdefgh"), st.integers(1, 3),
                  st.sampled_from(["queue", "skip", "cancel_previous"]), st.integers(-2, 2)),
        st.builds(release, st.sampled_from("abcdefgh")),
    ),
    max_size=40,
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@for_all(commands)
def test_never_over_the_limit_never_waiting_with_a_free_slot_never_skipped_and_held(
    sequence: list[AnyAdmissionCommand],
) -> None:
    state = INITIAL_ADMISSION
    for command in sequence:
        events = decide_admission(state, command)
        state = fold_admission(state, events)
        check_gate(state)  # no run waits while a slot is free; none both held and waiting
        assert len(state.holders) <= state.limit or not any(
            isinstance(e, AdmissionGranted) for e in events
        )
        assert decide_admission(state, command) == () or isinstance(command, ReleaseAdmission)
        assert not set(state.holders) & {run for run, _ in state.skipped}, "skipped and held"


def test_a_skipped_start_is_a_cancelled_run_that_never_schedules_a_step() -> None:
    then = given().when(gated("skipped", holder="r0"))
    assert [type(e) for e in then.events] == [
        RunStarted, RunQueued, type(then.events[2]), RunCancelled
    ]  # fmt: skip
    assert then.state.status == "cancelled" and then.state.holder_run_id == "r0"
    then.then_lacks(StepScheduled)


def test_a_start_refused_by_the_schema_is_a_failed_run_naming_the_errors() -> None:
    then = given().when(gated("invalid", reason="$.customer: 7 is not a string"))
    failed = then.events[-1]
    assert isinstance(failed, RunFailed) and "$.customer" in failed.error.message
    then.then_lacks(StepScheduled)


def test_a_pending_start_schedules_nothing_until_admitted() -> None:
    then = given().when(gated("pending"))
    assert then.state.status == "pending"
    then.then_lacks(StepScheduled)
    assert isinstance(gated("pending"), StartGated)
