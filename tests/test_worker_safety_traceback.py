"""`short_traceback` with its cache of formatted stacks says exactly what the traceback module
says: the last `traceback_lines_max` lines of `traceback.format_exception`, for errors of every
shape (deep, recursive, chained, grouped, with notes, never raised), seen once or again, with
each file under an entry of `sys.path` named relative to it."""

from __future__ import annotations

import sys
import traceback
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dagnats import worker_safety
from dagnats.worker_safety import cut_text, portable_paths, short_traceback, traceback_lines_max


def _expected(error: BaseException) -> str:
    lines = traceback.format_exception(error)
    return cut_text("".join(portable_paths(line) for line in lines[-traceback_lines_max:]))


def _recurse(depth: int, message: str) -> None:
    if depth <= 0:
        raise ValueError(message)
    _recurse(depth - 1, message)


def _other(depth: int, message: str) -> None:
    if depth <= 0:
        raise KeyError(message)
    _recurse(depth - 1, message)


def _caught(depth: int, message: str, shape: str) -> BaseException:
    try:
        try:
            (_recurse if depth % 2 else _other)(depth, message)
        except Exception as inner:
            if shape == "cause":
                raise RuntimeError(f"wrapped {message}") from inner
            if shape == "context":
                raise RuntimeError(f"while handling {message}")  # noqa: B904
            if shape == "suppressed":
                raise RuntimeError(f"instead {message}") from None
            if shape == "group":
                raise ExceptionGroup("group", [inner, TypeError(message)]) from None
            if shape == "notes":
                inner.add_note(f"note {message}")
            raise
    except BaseException as error:  # (the error under test)
        return error
    raise AssertionError("nothing was raised")


SHAPES = ("plain", "cause", "context", "suppressed", "group", "notes")


@settings(max_examples=150, deadline=None)
@given(
    depth=st.integers(min_value=0, max_value=worker_safety.traceback_cached_frames_max + 8),
    message=st.text(max_size=40),
    shape=st.sampled_from(SHAPES),
)
def test_short_traceback_is_the_traceback_modules_text(
    depth: int, message: str, shape: str
) -> None:
    error = _caught(depth, message, shape)
    assert short_traceback(error) == _expected(error)
    again = _caught(depth, message + "!", shape)  # the same stack, cached now
    assert short_traceback(again) == _expected(again)


def test_an_error_never_raised_has_no_stack() -> None:
    error = ValueError("never raised")
    assert short_traceback(error) == _expected(error) == "ValueError: never raised\n"


def test_a_syntax_error_reads_the_same() -> None:
    try:
        compile("def broken(:\n", "<handler>", "exec")
    except SyntaxError as error:
        assert short_traceback(error) == _expected(error)
    else:
        pytest.fail("no SyntaxError")


def test_a_cached_stack_is_reused_and_the_cache_is_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(worker_safety, "_stacks", {})
    first, second = _caught(3, "one", "plain"), _caught(3, "two", "plain")
    assert short_traceback(first) != short_traceback(second)  # (messages differ)
    assert len(worker_safety._stacks) == 1
    monkeypatch.setattr(worker_safety, "traceback_stacks_cached_max", 2)
    for depth in range(5):
        error = _caught(depth, "x", "plain")
        assert short_traceback(error) == _expected(error)
        assert len(worker_safety._stacks) <= 2


def test_two_files_with_the_same_handler_each_get_their_own_file_name(tmp_path: Path) -> None:
    """Equal code objects of two files compare equal (the file name is not compared): the
    cache tells them apart by the file, so each traceback names its own."""
    first, second = (_raised_in(tmp_path / f"{name}.py") for name in ("a_handler", "b_handler"))
    assert first.__traceback__ is not None and second.__traceback__ is not None
    assert short_traceback(first) == _expected(first)
    assert short_traceback(second) == _expected(second)
    assert "b_handler.py" in short_traceback(second)


def _raised_in(path: Path) -> ValueError:
    source = "def handle(x):\n    raise ValueError(x)\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(source, encoding="utf-8")
    namespace: dict[str, Any] = {}
    exec(compile(source, str(path), "exec"), namespace)
    try:
        namespace["handle"]("boom")
    except ValueError as error:
        return error
    raise AssertionError("nothing was raised")


def test_a_file_under_sys_path_is_named_relative_to_it_in_any_checkout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same handler installed in two places gives the same text (a simulated seed's history
    digest does not depend on the checkout); the deepest sys.path entry wins."""
    texts = []
    for checkout in ("one", "two"):
        root = tmp_path / checkout
        monkeypatch.setattr(sys, "path", [str(tmp_path), str(root), *sys.path])
        error = _raised_in(root / "shop" / "handlers.py")
        texts.append(short_traceback(error))
        assert 'File "shop/handlers.py", line 2, in handle' in texts[-1], texts[-1]
        assert str(tmp_path) not in texts[-1]
        assert "raise ValueError(x)" in texts[-1]  # the source line is still shown
    assert texts[0] == texts[1]


def test_a_file_outside_sys_path_keeps_its_whole_path(tmp_path: Path) -> None:
    path = tmp_path / "elsewhere" / "handler.py"
    assert not any(str(path).startswith(entry + "/") for entry in sys.path if entry)
    text = short_traceback(_raised_in(path))
    assert f'File "{path}", line 2, in handle' in text, text
