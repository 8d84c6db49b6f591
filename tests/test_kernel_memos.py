"""The kernel's and the subject builders' memos answer exactly what they stand for: a life tag
from the memo equals the one formatted from the seed, a task message id formatted in one go
equals the id composed of its parts, and a memoized subject equals the one built and checked
anew (an invalid id is never remembered: it is refused every time)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dagnats.runtime import resources
from dagnats.runtime import settings as runtime_settings
from kernel import effects, limits

seeds = st.integers(-(2**64), 2**64)
tokens = st.text("abcXYZ019_-", min_size=1, max_size=40)


@given(seeds)
def test_a_cached_life_tag_equals_the_formatted_one(seed: int) -> None:
    formatted = f"{seed & 0xFFFFFFFF:08x}"
    assert effects.life_tag(seed) == formatted  # first: formatted and remembered
    assert effects.life_tag(seed) == formatted  # again: from the memo
    assert len(formatted) == 8 and int(formatted, 16) == seed & 0xFFFFFFFF


@given(tokens, tokens, st.integers(1, limits.attempt_number_max), seeds)
def test_a_task_message_id_is_its_attempt_key_in_its_life(
    run_id: str, step_id: str, attempt: int, seed: int
) -> None:
    composed = effects.in_life(effects.attempt_key(run_id, step_id, attempt), seed)
    assert effects.task_msg_id(run_id, step_id, attempt, seed) == composed
    assert composed == f"{run_id}:{step_id}:{attempt}~{seed & 0xFFFFFFFF:08x}"
    assert effects.attempt_key_of(composed) == effects.attempt_key(run_id, step_id, attempt)


def test_the_life_tag_memo_is_bounded() -> None:
    for seed in range(limits.life_tags_cached_max + 10):
        assert effects.life_tag(seed) == f"{seed:08x}"
    assert len(effects._life_tags) <= limits.life_tags_cached_max


@settings(max_examples=50)
@given(tokens)
def test_a_memoized_history_subject_equals_the_built_one(run_id: str) -> None:
    expected = f"{resources.HISTORY_PREFIX}.{resources.check_run_id(run_id)}"
    assert resources.history_subject(run_id) == expected
    assert resources.history_subject(run_id) == expected


def test_an_invalid_id_is_refused_every_time() -> None:
    for bad in ("a.b", "a*", "", "x" * 1_000):
        for _ in range(2):
            with pytest.raises(resources.SubjectTokenError):
                resources.history_subject(bad)
        assert bad not in resources._history_subjects
    for lane in ("a b", "a.*", "t@g.h"):
        for _ in range(2):
            with pytest.raises(resources.SubjectTokenError):
                resources.task_subject(lane)
        assert lane not in resources._task_subjects


def test_task_subjects_from_the_memo_equal_the_built_ones() -> None:
    for lane in ("email.send", "noop", "noop@gpu"):
        built = resources._task_subject(lane)
        assert resources.task_subject(lane) == built == resources.task_subject(lane)
    assert resources.task_subject("noop@gpu") == "dagnats.task.noop.@gpu"


def test_the_subject_memos_are_bounded() -> None:
    for index in range(runtime_settings.subjects_cached_max + 10):
        resources.history_subject(f"run-{index}")
    assert len(resources._history_subjects) <= runtime_settings.subjects_cached_max
