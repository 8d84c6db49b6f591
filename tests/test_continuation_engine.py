"""The engine's side of continue-as-new, on the in-memory log: the new run is started by an
effect after the old run's terminal append, and again after a restart while it has no history
(the engine stopped between the append and the effect); task messages carry the history size."""

from __future__ import annotations

import msgspec

from dagnats.runtime.engine import Engine
from dagnats.runtime.links import LinkEffect, RunLinks
from dagnats.sim.memory import LogPort, MemoryEventLog, VirtualTime
from kernel import codec
from kernel.effects import EnqueueTask, StartContinuation
from tests.kernel_dsl import complete, start, step_of, task, workflow

LOOP = workflow(task("work"), step_of("again", "continue_as_new", {}, "work"), name="loop")


class Captured(RunLinks):
    def __init__(self) -> None:
        super().__init__(Sink(), _NoWorkflows())  # type: ignore[arg-type]  # never publishes
        self.effects: list[LinkEffect] = []

    async def execute(self, effect: LinkEffect) -> None:
        self.effects.append(effect)


class Sink:
    def __init__(self) -> None:
        self.tasks: list[bytes] = []

    async def publish(self, task_type: str, payload: bytes, msg_id: str) -> None:
        self.tasks.append(payload)

    async def arm(self, run_id: str, timer_id: str, fire_at_ms: int, payload: bytes) -> None:
        return None

    async def cancel(self, run_id: str, timer_id: str) -> None:
        return None

    async def publish_dead(self, kind: str, payload: bytes, reason: str) -> None:
        raise AssertionError(f"dead letter {kind}: {reason}")


class _NoWorkflows:
    async def get_workflow(self, name: str) -> None:
        return None


def engine(log: MemoryEventLog, links: Captured, sink: Sink) -> Engine:
    return Engine(LogPort(log), sink, sink, sink, links=links)


async def test_a_continued_run_starts_its_successor_and_again_after_a_restart() -> None:
    log = MemoryEventLog(VirtualTime())
    links, sink = Captured(), Sink()
    first = engine(log, links, sink)
    assert await first.handle(codec.encode(start(LOOP, {"n": 0}, at_ms=1))) == "applied"
    (message,) = sink.tasks
    assert msgspec.json.decode(message, type=EnqueueTask).history_events == 2
    assert await first.handle(codec.encode(complete("work", {"n": 1}, at_ms=2))) == "applied"
    (effect,) = links.effects
    assert isinstance(effect, StartContinuation) and effect.new_run_id == "r1-cont1"

    links.effects.clear()
    restarted = engine(log, links, sink)  # an empty cache: as after a restart
    assert not await restarted.resume_run("r1"), "a continued run is ended"
    assert [type(e) for e in links.effects] == [StartContinuation], "its successor never started"

    links.effects.clear()
    successor = start(LOOP, {"n": 1}, run_id="r1-cont1", at_ms=3)
    assert await restarted.handle(codec.encode(successor)) == "applied"
    assert not await restarted.resume_run("r1")
    assert links.effects == [], "the successor exists: nothing to start"

