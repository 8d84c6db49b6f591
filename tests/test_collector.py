"""`dagnats.runtime.collector.settle`: what a serve or worker process holds once up is frozen
(no collector pass walks it again) and the thresholds are the named settings."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from dagnats.runtime import collector, settings


@pytest.fixture
def restored_collector() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


@pytest.mark.usefixtures("restored_collector")
def test_settle_freezes_what_is_held_and_sets_the_named_thresholds() -> None:
    gc.unfreeze()
    before = gc.get_freeze_count()
    collector.settle()
    assert gc.get_freeze_count() > before
    assert gc.get_threshold() == (
        settings.gc_young_threshold, settings.gc_middle_threshold, settings.gc_old_threshold
    )  # fmt: skip
    frozen = gc.get_freeze_count()
    gc.collect()  # a full pass leaves what is frozen frozen
    assert gc.get_freeze_count() == frozen


@pytest.mark.usefixtures("restored_collector")
def test_garbage_in_cycles_made_after_settle_is_still_collected() -> None:
    collector.settle()

    class Node:
        def __init__(self) -> None:
            self.me = self

    dropped = Node()
    gone = weakref.ref(dropped)
    del dropped
    assert gone() is not None  # (a cycle: reference counts alone do not free it)
    gc.collect()
    assert gone() is None

