"""`engine_state_is_fold` compares a run's workflow and step definitions once per pair of
objects (immutable: equal once, equal for good) and keeps catching every other difference: an
engine's cached state equal to the fold passes; one that differs in any field, its workflow or
its step definitions included, is a violation, also after the pair was found equal."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import cast

import msgspec

from dagnats.runtime.engine import Engine, Loaded
from dagnats.sim.invariants import Oracle
from kernel import codec
from kernel.state import RunState
from tests.sim_mutants import simulate_chain


@dataclass
class CachedStates:
    """What `Oracle.check_engine` reads of an engine: its cache and its parked runs."""

    _cache: dict[str, object] = field(default_factory=dict)
    parked: dict[str, str] = field(default_factory=dict)


def _checked(oracle: Oracle, engine: CachedStates, state: RunState, last_seq: int) -> int:
    """The violations of `engine_state_is_fold` after the engine caches `state` anew."""
    engine._cache["run-1"] = Loaded(state=state, last_seq=last_seq)
    oracle.check_engine("engine-1.1", cast(Engine, engine))
    return sum(v.invariant == "engine_state_is_fold" for v in oracle.violations)


def test_a_cached_state_is_checked_in_every_field_with_its_definitions_compared_once() -> None:
    simulation = simulate_chain(seed=3)
    oracle = simulation.oracle
    oracle.violations.clear()
    track = oracle.runs["run-1"]
    last_seq = max(track.states)
    fold = track.states[last_seq]
    assert fold.workflow is not None and fold.step_defs
    engine = CachedStates()
    # Decoded again: equal to the fold, and its workflow and step definitions other objects.
    copy = codec.decode_state(codec.encode(fold))
    assert copy == fold and copy.workflow is not fold.workflow
    assert copy.step_defs[0] is not fold.step_defs[0]
    assert _checked(oracle, engine, copy, last_seq) == 0
    assert _checked(oracle, engine, codec.decode_state(codec.encode(fold)), last_seq) == 0
    # The definitions' pair is known equal now: another field that differs is still caught.
    counted = msgspec.structs.replace(copy, event_count=copy.event_count + 1)
    assert _checked(oracle, engine, counted, last_seq) == 1
    assert copy.workflow is not None
    renamed = msgspec.structs.replace(
        copy, workflow=msgspec.structs.replace(copy.workflow, name="another")
    )
    assert _checked(oracle, engine, renamed, last_seq) == 2
    fewer = msgspec.structs.replace(copy, step_defs=copy.step_defs[:-1])
    assert _checked(oracle, engine, fewer, last_seq) == 3
    stale = track.states[min(seq for seq in track.states if seq)]
    assert _checked(oracle, engine, stale, last_seq) == 4
    assert _checked(oracle, engine, copy, last_seq) == 4  # (and the right one passes again)
