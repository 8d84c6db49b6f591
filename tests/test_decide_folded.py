"""`decide_folded`: the same decision as `decide`, with the state after each of its events as
`evolve` folds them (the engine reacts to those states and keeps the last, instead of
folding the events a second time), over reachable runs (tests/strategies.py)."""

from __future__ import annotations

from hypothesis import HealthCheck, settings
from hypothesis import given as for_all

from kernel.commands import Rejection
from kernel.decide import decide, decide_folded
from kernel.reducer import evolve
from tests.kernel_dsl import Then, complete, fail, given, start, task, workflow
from tests.lifecycle_dsl import discard, reopen
from tests.strategies import Run, runs

PROPERTY = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@PROPERTY
@for_all(runs(after_terminal_max=5))
def test_decide_folded_decides_as_decide_with_the_state_after_each_event(run: Run) -> None:
    for index, record in enumerate(run.records):
        decided, states = decide_folded(record.before, record.command)
        assert decided == decide(record.before, record.command), f"record {index}"
        if isinstance(decided, Rejection) or not decided:
            assert states == (), f"record {index}: states {states!r} for {decided!r}"
            continue
        assert len(states) == len(decided), f"record {index}"
        state = record.before
        for position, (event, after) in enumerate(zip(decided, states, strict=True)):
            state = evolve(state, event)
            assert after == state, f"record {index}, event {position}: {event!r}"
        assert states[-1] == record.after, f"record {index}: the last state is the run's after"


def _same_as_decide_and_folded(then: Then) -> None:
    decided, states = decide_folded(then.before, then.command)
    assert decided == then.result and decided, (decided, then.result)
    state = then.before
    for event, after in zip(then.events, states, strict=True):
        state = evolve(state, event)
        assert after == state, event


def test_a_reopen_and_a_discard_come_folded_too() -> None:
    """The operator's operations (kernel.reopen) decide through a builder as well."""
    failed = (start(CHAIN, {"n": 1}), complete("a", "A"), fail("b", "boom", kind="non_retryable"))
    reopened = given(*failed).when(reopen())
    assert len(reopened.events) >= 2  # (the reopen, then the reset step's start)
    _same_as_decide_and_folded(reopened)
    _same_as_decide_and_folded(given(*failed).when(discard("b", 1)))
    assert decide_folded(given(*failed, discard("b", 1)).state, discard("b", 1)) == ((), ())


CHAIN = workflow(task("a"), task("b", "a"), task("c", "b"))
