"""A hypothesis state machine driving one run of a generated DAG through the pure kernel.

Each rule is one command a real shell could send at that point (a worker's result for a live
attempt, a fired timer `react` or `resume` armed, a duplicate or stale delivery, a cancel), built
by the shared driver in `tests/strategies.py`, or an engine restart; every event comes from
`decide`. After each rule the
invariants check the history against the state: fold, codec, completions, attempts, terminal
status and the concurrency limit.
"""

from __future__ import annotations

from collections import Counter

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from kernel.codec import decode_decision, encode_decision
from kernel.commands import AnyCommand
from kernel.events import AnyEvent, StepCompleted, StepScheduled
from kernel.reducer import fold
from kernel.state import ACTIVE_STEP_STATUSES, is_terminal
from kernel.workflow import WorkflowDef
from tests.strategies import (
    CommandKind,
    Driver,
    draw_command,
    handler_ids,
    retry_policy,
    seeds,
    workflows,
)


class KernelRun(RuleBasedStateMachine):
    """One run of a generated workflow, command by command."""

    def __init__(self) -> None:
        super().__init__()
        self._driver: Driver | None = None
        self.decoded_events: list[AnyEvent] = []
        self.terminal_status: str | None = None
        self.terminal_event_count = 0

    @property
    def driver(self) -> Driver:
        assert self._driver is not None, "initialize runs first"
        return self._driver

    @initialize(workflow=workflows(), at_ms=st.integers(0, 10**12), seed=seeds)
    def start_run(self, workflow: WorkflowDef, at_ms: int, seed: int) -> None:
        self._driver = Driver(workflow)
        record = self.driver.start(at_ms=at_ms, seed=seed, input=b'{"q":1}')
        assert record.events, "a valid workflow starts"
        self._check_decision(record.command, record.events)

    def _send(self, data: st.DataObject, kind: CommandKind) -> None:
        command = draw_command(data.draw, self.driver, kind)
        record = self.driver.send(command)
        self._check_decision(command, record.events)

    def _check_decision(self, command: AnyCommand, events: tuple[AnyEvent, ...]) -> None:
        """The decision as stored: encode, decode, re-encode to the same bytes."""
        if not events:
            return
        data = encode_decision(command, events)
        decision = decode_decision(data)
        assert decision.command == command and decision.events == events
        assert encode_decision(decision.command, decision.events) == data
        self.decoded_events.extend(decision.events)

    # Rules: one command each.

    @precondition(lambda self: bool(self.driver.live_attempts()))
    @rule(data=st.data())
    def complete_a_live_attempt(self, data: st.DataObject) -> None:
        self._send(data, "complete")

    @precondition(lambda self: bool(self.driver.live_attempts()))
    @rule(data=st.data())
    def start_a_live_attempt(self, data: st.DataObject) -> None:
        self._send(data, "start_task")

    @precondition(lambda self: bool(self.driver.live_attempts()))
    @rule(data=st.data())
    def fail_a_live_attempt(self, data: st.DataObject) -> None:
        self._send(data, "fail")

    @precondition(lambda self: bool(self.driver.armed))
    @rule(data=st.data())
    def fire_an_armed_timer(self, data: st.DataObject) -> None:
        self._send(data, "timer")

    @rule(data=st.data())
    def send_a_duplicate(self, data: st.DataObject) -> None:
        self._send(data, "duplicate")

    @precondition(lambda self: bool(self.driver.stale_attempts()))
    @rule(data=st.data())
    def send_a_stale_result(self, data: st.DataObject) -> None:
        self._send(data, "stale")

    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        self._send(data, "cancel")

    @rule()
    def restart_the_engine(self) -> None:
        """resume(state) arms the run's timers again; nothing is appended."""
        before = self.driver.state
        self.driver.restart()
        assert self.driver.state is before

    # Invariants, after every rule.

    @invariant()
    def state_is_the_fold_of_the_history(self) -> None:
        if self._driver is None:
            return
        state = self.driver.state
        assert fold(self.driver.events) == state
        assert fold(self.decoded_events) == state, "the decoded history folds to another state"
        assert state.event_count == len(self.decoded_events)

    @invariant()
    def no_step_completes_twice(self) -> None:
        if self._driver is None:
            return
        events = self.driver.events
        completed = Counter(e.step_id for e in events if isinstance(e, StepCompleted))
        twice = [step_id for step_id, count in completed.items() if count > 1]
        assert not twice, f"completed twice: {twice}"

    @invariant()
    def attempts_stay_within_the_retry_policy(self) -> None:
        if self._driver is None:
            return
        workflow = self.driver.workflow
        last: dict[str, int] = {}
        for event in self.driver.events:
            if isinstance(event, StepScheduled):
                assert event.attempt == last.get(event.step_id, 0) + 1, f"{event!r} after {last}"
                last[event.step_id] = event.attempt
        for step, step_def in zip(self.driver.state.steps, workflow.steps, strict=True):
            policy = retry_policy(workflow, step_def)
            assert step.attempt == last.get(step.step_id, 0)
            top = policy.max_attempts + step.lost_attempts  # lost attempts are not failures
            assert 0 <= step.attempt <= top, f"{step!r} over {policy!r}"

    @invariant()
    def terminal_stays_terminal(self) -> None:
        if self._driver is None:
            return
        state = self.driver.state
        if self.terminal_status is None:
            if is_terminal(state):
                self.terminal_status = state.status
                self.terminal_event_count = state.event_count
            return
        assert state.status == self.terminal_status, f"{self.terminal_status} -> {state.status}"
        assert state.event_count == self.terminal_event_count, "events after the end"
        assert not self.driver.armed, f"timers armed after the end: {sorted(self.driver.armed)}"

    @invariant()
    def active_steps_stay_within_max_concurrent_steps(self) -> None:
        """All active steps while running; body steps (not handlers) always. A compensation
        handler may go over the limit (known bug: see
        test_active_steps_never_exceed_max_concurrent_steps)."""
        if self._driver is None:
            return
        state = self.driver.state
        assert state.workflow is not None
        limit = state.workflow.max_concurrent_steps
        if limit is None:
            return
        handlers = handler_ids(state.workflow)
        active = [s.step_id for s in state.steps if s.status in ACTIVE_STEP_STATUSES]
        body = [step_id for step_id in active if step_id not in handlers]
        assert len(body) <= limit, f"{body} active, limit {limit}"
        if state.status == "running":
            assert len(active) <= limit, f"{active} active while running, limit {limit}"


KernelRun.TestCase.settings = settings(
    max_examples=200,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
TestKernelRun = KernelRun.TestCase
