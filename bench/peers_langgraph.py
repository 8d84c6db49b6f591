"""LangGraph with its SQLite checkpointer (`langgraph`, `langgraph-checkpoint-sqlite`, the
`bench` extra) in `python -m bench.peers`; each call runs in a process of its own:

    python -m bench.peers_langgraph workloads --dir DIR   # chain, one_step, fanout
    python -m bench.peers_langgraph resume-start --dir DIR   # blocks in s5 until killed
    python -m bench.peers_langgraph resume-finish --dir DIR  # continues from the checkpoint

Every node is a no-op; each graph invocation is one thread (`thread_id`) checkpointed in
`DIR/langgraph.sqlite` after every super-step. Prints JSON lines (`bench.peer_child`); when
LangGraph is not installed, one `{"kind": "skipped"}` line. Imports LangGraph at run time only
(the project's tests and type checks never need it). Writes only inside DIR.
"""

from __future__ import annotations

import importlib
import operator
import sqlite3
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Annotated, Any, Final, TypedDict

from bench.peer_child import Args, child_main, cpu_per_step, reached, say

CHAIN_STEPS: Final = 10
CHAIN_RUNS: Final = 20
ONE_STEP_RUNS: Final = 30
FANOUT_WIDTH: Final = 100
FANOUT_RUNS: Final = 3
BLOCK_STEP: Final = 5
RESUME_THREAD: Final = "resume"


class State(TypedDict):
    hits: Annotated[int, operator.add]


def _noop(_state: State) -> dict[str, int]:
    return {"hits": 1}


def chain_graph(steps: int, block_in: Path | None = None) -> Any:
    graph = importlib.import_module("langgraph.graph")
    builder = graph.StateGraph(State)
    previous = graph.START
    for index in range(steps):
        node = _blocking(block_in) if block_in is not None and index == BLOCK_STEP else _noop
        builder.add_node(f"s{index}", node)
        builder.add_edge(previous, f"s{index}")
        previous = f"s{index}"
    builder.add_edge(previous, graph.END)
    return builder


def _blocking(directory: Path) -> Any:
    def node(_state: State) -> dict[str, int]:
        reached(directory)
        time.sleep(60.0)  # the bench SIGKILLs this process meanwhile
        raise AssertionError("resume-start was not killed within 60 s")

    return node


def fanout_graph(width: int) -> Any:
    graph = importlib.import_module("langgraph.graph")
    builder = graph.StateGraph(State)
    parallel = [f"p{index:03d}" for index in range(width)]
    for node in parallel:
        builder.add_node(node, _noop)
        builder.add_edge(graph.START, node)
    builder.add_node("join", _noop)
    builder.add_edge(parallel, "join")
    builder.add_edge("join", graph.END)
    return builder


def saver(directory: Path) -> Any:
    sqlite = importlib.import_module("langgraph.checkpoint.sqlite")
    connection = sqlite3.connect(directory / "langgraph.sqlite", check_same_thread=False)
    return sqlite.SqliteSaver(connection)


def invoke(app: Any, thread_id: str, value: object) -> object:
    return app.invoke(value, {"configurable": {"thread_id": thread_id}})


def timed_runs(app: Any, runs: int, expected_hits: int) -> list[float]:
    durations = []
    for _ in range(runs):
        started = time.perf_counter()
        out = invoke(app, uuid.uuid4().hex, {"hits": 0})
        durations.append(time.perf_counter() - started)
        assert isinstance(out, dict) and out["hits"] == expected_hits, out
    return durations


def workloads(directory: Path) -> None:
    checkpointer = saver(directory)
    chain = chain_graph(CHAIN_STEPS).compile(checkpointer=checkpointer)
    one = chain_graph(1).compile(checkpointer=checkpointer)
    fan = fanout_graph(FANOUT_WIDTH).compile(checkpointer=checkpointer)
    for app, hits in ((chain, CHAIN_STEPS), (one, 1), (fan, FANOUT_WIDTH + 1)):
        timed_runs(app, 1, hits)  # warm-up
    with cpu_per_step(CHAIN_RUNS * CHAIN_STEPS) as cpu:
        durations = timed_runs(chain, CHAIN_RUNS, CHAIN_STEPS)
    say({"workload": "chain", "value": sum(durations) * 1000 / (CHAIN_RUNS * CHAIN_STEPS), **cpu})
    with cpu_per_step(ONE_STEP_RUNS) as cpu:
        durations = timed_runs(one, ONE_STEP_RUNS, 1)
    say({"workload": "one_step", "value": statistics.median(durations) * 1000, **cpu})
    with cpu_per_step(FANOUT_RUNS * (FANOUT_WIDTH + 1)) as cpu:
        durations = timed_runs(fan, FANOUT_RUNS, FANOUT_WIDTH + 1)
    say({"workload": "fanout", "value": statistics.median(durations), **cpu})


def resume_start(directory: Path) -> None:
    app = chain_graph(CHAIN_STEPS, block_in=directory).compile(checkpointer=saver(directory))
    invoke(app, RESUME_THREAD, {"hits": 0})


def resume_finish(directory: Path) -> None:
    app = chain_graph(CHAIN_STEPS).compile(checkpointer=saver(directory))
    out = invoke(app, RESUME_THREAD, None)  # None: continue the thread from its checkpoint
    assert isinstance(out, dict) and out["hits"] == CHAIN_STEPS, out
    say({"workload": "resume", "done": True, "hits": out["hits"]})


def run(arguments: Args) -> None:
    actions = {"workloads": workloads, "resume-start": resume_start,
               "resume-finish": resume_finish}  # fmt: skip
    actions[arguments.action](arguments.directory)


if __name__ == "__main__":
    sys.exit(child_main("langgraph", ("langgraph.graph", "langgraph.checkpoint.sqlite"), run))
