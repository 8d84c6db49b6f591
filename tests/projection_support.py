"""Histories for projection and audit tests: generated runs (by `decide`) as stream messages."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hypothesis import strategies as st
from nats.js import JetStreamContext

from dagnats.runtime.projector import Projector, SqliteTarget
from kernel import codec
from kernel.commands import AnyCommand, CompleteTask, StartRun
from kernel.events import AnyEvent
from kernel.workflow import StepDef, WorkflowDef
from projections.base import Message
from projections.sqlite import QueryTables
from tests.strategies import RUN_ID, Run, replay, runs


@dataclass(frozen=True)
class History:
    """Several generated runs, interleaved in one stream as history messages."""

    runs: dict[str, Run]
    messages: list[Message]

    def events_of(self, run_id: str) -> list[AnyEvent]:
        return [
            event
            for _, owner, data in self.messages
            if owner == run_id
            for event in codec.decode_decision(data).events
        ]

    def own(self, run_id: str) -> list[tuple[int, bytes]]:
        return [(seq, data) for seq, owner, data in self.messages if owner == run_id]


def run_messages(run: Run, run_id: str = RUN_ID) -> list[bytes]:
    """The history messages of a generated run, as the engine appends them, under `run_id`
    (the strategies name every run RUN_ID; the id is swapped in the bytes)."""
    own = f'"run_id":"{run_id}"'.encode()
    return [
        codec.encode_decision(record.command, record.events).replace(
            f'"run_id":"{RUN_ID}"'.encode(), own
        )
        for record in run.records
        if record.events
    ]


@st.composite
def histories(draw: st.DrawFn, runs_max: int = 3, commands_max: int = 30) -> History:
    """1..runs_max generated runs interleaved in stream order, with gaps in the sequence."""
    generated = draw(st.lists(runs(commands_max=commands_max), min_size=1, max_size=runs_max))
    by_id = {f"run-{index}": run for index, run in enumerate(generated)}
    queues = {run_id: run_messages(run, run_id) for run_id, run in by_id.items()}
    order = draw(st.permutations([run_id for run_id, queue in queues.items() for _ in queue]))
    messages: list[Message] = []
    seq = 0
    positions = dict.fromkeys(queues, 0)
    for run_id in order:
        seq += draw(st.integers(1, 3))  # other runs' messages may sit between (gaps)
        messages.append((seq, run_id, queues[run_id][positions[run_id]]))
        positions[run_id] += 1
    return History(by_id, messages)


def two_step_workflow(name: str = "pair") -> WorkflowDef:
    """a -> b, task steps."""
    return WorkflowDef(
        name=name,
        steps=(StepDef(id="a", task="fetch"), StepDef(id="b", task="store", depends_on=("a",))),
    )


def completed_run(run_id: str = RUN_ID, name: str = "pair", at_ms: int = 1_000) -> list[bytes]:
    """The history messages of a two-step run that completes."""
    workflow = two_step_workflow(name)
    commands: list[AnyCommand] = [
        StartRun(run_id=RUN_ID, at_ms=at_ms, workflow=workflow),
        CompleteTask(run_id=RUN_ID, at_ms=at_ms + 1_000, step_id="a", attempt=1),
        CompleteTask(run_id=RUN_ID, at_ms=at_ms + 2_000, step_id="b", attempt=1),
    ]
    return run_messages(replay(workflow, commands), run_id)


async def tables_caught_up(js: JetStreamContext, path: Path) -> int:
    """Run the query tables' projector (as serve does) into the SQLite file at `path` over
    what the history stream holds, and close it; its checkpoint."""
    target = SqliteTarget(path, QueryTables())
    try:
        return await Projector(js, target, batch_max=50).catch_up()
    finally:
        await target.close()
