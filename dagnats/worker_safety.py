"""What keeps a hostile handler from knocking a worker over: safe rendering of what it raised,
error texts cut to their limit, and the check of what it returned before it is encoded.

- `render_error(error)`: "<ExcType>: <message>", or "<ExcType> (its message could not be
  rendered: <why>)" when its `__str__` raises; never raises itself.
- `cut_text(text, bytes_max)`: at most `bytes_max` UTF-8 bytes, cut on a character boundary
  with a marker saying how long the text was.
- `short_traceback(error)`: the last lines of its traceback, cut to the error limit; the
  frames of a stack already seen (the same code at the same instructions) are not formatted
  again (`traceback_stacks_cached_max` stacks kept, per process). A file under an entry of
  `sys.path` is named relative to it (`dagnats/examples/order/worker.py`, `asyncio/tasks.py`),
  and another file of an imported module by its module's name (an editable install's checkout
  is found by a finder, not by a `sys.path` entry): the text stored in history does not depend
  on where the code was installed, so a simulated seed gives the same history digest in any
  checkout, and a host's layout is not recorded.
- `output_problem(value)`: why a handler's return value cannot be the step's output (JSON
  nesting deeper than `json_depth_max`, a NaN or an infinity, bytes of any kind), with the
  JSON path of the first offending place (`$.items[3].score`), or None. The walk is
  iterative (an explicit stack), so a 100,000-deep value costs no recursion.
- `output_json(value)`: the output's JSON bytes, or the text of why it cannot be sent (the
  problem above, an encoder error, or its size over `payload_bytes_max`).

This module does no I/O; it is pure functions over values the handler gave.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import sys
import traceback
from collections.abc import Iterable, Iterator
from types import CodeType, TracebackType
from typing import Final

import msgspec

from kernel import limits

# The deepest nesting of JSON containers a step output may have (a top-level list or object
# is depth 1). Beyond it the encoder would recurse past what a Python stack holds.
# Belongs in kernel/limits.py, shared with the client's input checks (see the report).
traceback_lines_max: Final = 12
cut_marker_bytes_max: Final = 64  # room kept for "... (cut: N bytes)"
# Formatted stacks kept for `short_traceback` (keyed by code and instruction of each frame):
# a handler that keeps failing the same way is formatted once, not once per attempt.
traceback_stacks_cached_max: Final = 256
traceback_cached_frames_max: Final = 64  # deeper stacks are formatted each time, not kept
_BYTES_TYPES: Final = (bytes, bytearray, memoryview)


def cut_text(text: str, bytes_max: int = limits.error_message_bytes_max) -> str:
    """`text` in at most `bytes_max` UTF-8 bytes; a cut one ends with how long it was."""
    assert bytes_max > cut_marker_bytes_max, bytes_max
    encoded = text.encode("utf-8", errors="replace")
    if len(encoded) <= bytes_max:
        return text
    marker = f"... (cut: {len(encoded)} bytes)"
    kept = encoded[: bytes_max - len(marker.encode())].decode("utf-8", errors="ignore")
    result = kept + marker
    assert len(result.encode()) <= bytes_max
    return result


def _type_name(error: BaseException) -> str:
    return cut_text(type(error).__name__, 256)


def _why(problem: BaseException) -> str:
    """What went wrong rendering something, itself rendered without trusting it."""
    try:
        text = str(problem)
    except BaseException:  # (a hostile __str__ of the second order)
        text = ""
    name = _type_name(problem)
    return cut_text(f"{name}: {text}" if text else name, 1_024)


def render_error(error: BaseException) -> str:
    """The text "<ExcType>: <message>" (just the type when the message is empty), cut to the error
    limit; "<ExcType> (its message could not be rendered: <why>)" when str() raises."""
    name = _type_name(error)
    try:
        message = str(error)
    except BaseException as problem:  # (whatever a hostile __str__ raises)
        return cut_text(f"{name} (its message could not be rendered: {_why(problem)})")
    return cut_text(f"{name}: {message}" if message else name)


def render_message(error: BaseException) -> str:
    """str(error) cut to the error limit, or the `render_error` fallback when it raises."""
    try:
        return cut_text(str(error))
    except BaseException:
        return render_error(error)


def render_raised(error: BaseException) -> str:
    """How a BaseException a handler raised reads: "the handler raised SystemExit(3)"."""
    try:
        shown = repr(error)
    except BaseException as problem:
        shown = f"{_type_name(error)} (its message could not be rendered: {_why(problem)})"
    return cut_text(f"the handler raised {shown}")


def short_traceback(error: BaseException) -> str:
    """The last `traceback_lines_max` lines of the error's traceback, cut to the limit: the
    text of `traceback.format_exception(error)`, whose stack part is taken from a cache when
    the same stack was formatted before (an error with no chained exception, not a group)."""
    try:
        lines = _simple_traceback(error)
        if lines is None:
            lines = [portable_paths(line) for line in traceback.format_exception(error)]
    except BaseException as problem:  # (a traceback that cannot be formatted)
        return cut_text(f"(the traceback could not be rendered: {_why(problem)})")
    return cut_text("".join(lines[-traceback_lines_max:]))


_StackKey = tuple[tuple[CodeType, str, int], ...]
_stacks: dict[_StackKey, tuple[str, ...]] = {}


def _simple_traceback(error: BaseException) -> list[str] | None:
    """`traceback.format_exception(error)` for an error that chains no other and is not a group,
    its stack's lines cached by (code, its file, instruction) of each frame (equal code objects
    of two files compare equal: the file tells them apart); None for any other error
    (or a traceback limit set in `sys`): the caller formats it the usual way."""
    chained = error.__cause__ is not None or (
        error.__context__ is not None and not error.__suppress_context__
    )
    if chained or isinstance(error, BaseExceptionGroup) or hasattr(sys, "tracebacklimit"):
        return None
    head: list[str] = []
    tb = error.__traceback__
    if tb is not None:
        head = ["Traceback (most recent call last):\n", *_stack_lines(error, tb)]
    return head + traceback.format_exception_only(error)


def _stack_lines(error: BaseException, tb: TracebackType) -> tuple[str, ...]:
    key: list[tuple[CodeType, str, int]] = []
    walked: TracebackType | None = tb
    while walked is not None and len(key) <= traceback_cached_frames_max:
        code = walked.tb_frame.f_code
        key.append((code, code.co_filename, walked.tb_lasti))
        walked = walked.tb_next
    if walked is not None:  # (too deep to keep)
        return _formatted_stack(error, tb)
    cached = _stacks.get(tuple(key))
    if cached is None:
        cached = _formatted_stack(error, tb)
        if len(_stacks) >= traceback_stacks_cached_max:
            _stacks.clear()
        _stacks[tuple(key)] = cached
    return cached


def _formatted_stack(error: BaseException, tb: TracebackType) -> tuple[str, ...]:
    stack = traceback.TracebackException(type(error), error, tb).stack
    return tuple(portable_paths(entry) for entry in stack.format())


_FILE_LINE: Final = re.compile(r'^(\s*File ")([^"]+)(", line )', re.MULTILINE)


def portable_paths(text: str) -> str:
    """`text` (formatted traceback lines) with each `File "..."` path of an imported module
    named from its module's name (`dagnats/worker.py`, whether the checkout is found by a
    `sys.path` entry, by a parent folder's entry or by an editable install's finder), else
    under an entry of `sys.path` made relative to the longest such entry; other paths are left
    as they are."""
    roots = sorted({os.path.join(os.path.abspath(entry), "") for entry in sys.path if entry},
                   key=len, reverse=True)  # fmt: skip

    def relative(found: re.Match[str]) -> str:
        path = found.group(2)
        named = _module_files().get(path)
        for root in roots if named is None else ():
            if path.startswith(root):
                named = path[len(root) :]
                break
        return found.group(0) if named is None else f"{found.group(1)}{named}{found.group(3)}"

    return _FILE_LINE.sub(relative, text)


# (len(sys.modules) when it was made, each imported module's file -> its name from its module)
_module_names: list[tuple[int, dict[str, str]]] = [(-1, {})]


def _module_files() -> dict[str, str]:
    """Each imported module's file -> the same file named from its module's name
    (`dagnats.sim.loop` -> `dagnats/sim/loop.py`), where the file's path ends so. Made again
    when modules were imported since."""
    seen, names = _module_names[0]
    if seen == len(sys.modules):
        return names
    modules = list(sys.modules.values())
    names = {}
    for module in modules:
        spec, path = getattr(module, "__spec__", None), getattr(module, "__file__", None)
        name = getattr(spec, "name", None)
        if not isinstance(path, str) or not isinstance(name, str) or name == "__main__":
            continue
        parts, base = name.split("."), os.path.basename(path)
        named = os.path.join(*(parts if base.startswith("__init__.") else parts[:-1]), base)
        if path.endswith(os.sep + named):
            names[path] = named
    _module_names[0] = (len(modules), names)
    return names


def _children(value: object) -> Iterator[tuple[str, object]] | None:
    """The (path suffix, child) pairs of a container value; None for a leaf."""
    if isinstance(value, dict):
        return ((f"[{key!r}]" if not isinstance(key, str) else _key_path(key), child)
                for key, child in value.items())  # fmt: skip
    if isinstance(value, list | tuple | set | frozenset):
        return ((f"[{index}]", child) for index, child in enumerate(value))
    if isinstance(value, msgspec.Struct):
        return ((_key_path(name), getattr(value, name)) for name in value.__struct_fields__)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = dataclasses.fields(value)
        return ((_key_path(f.name), getattr(value, f.name)) for f in fields)
    return None


def _key_path(key: str) -> str:
    plain = key.isidentifier() and len(key) <= 64
    return f".{key}" if plain else f"[{cut_text(repr(key), 128)}]"


def output_problem(value: object, depth_max: int = limits.json_depth_max) -> str | None:
    """Why `value` cannot be a step output as it is, naming the place; None when it can.

    Refused: nesting deeper than `depth_max` containers, a float NaN or infinity (JSON has
    neither; encoders write null), and bytes, bytearray or memoryview (no JSON type; an
    encoder writes base64 text the reader never asked for).
    """
    assert 1 <= depth_max <= 10_000, depth_max
    return None if _plain_json(value, depth_max) else walked_problem(value, depth_max)


def output_json(value: object) -> bytes | str:
    """The JSON bytes of a step output, or why it cannot be sent (a text naming the problem:
    `output_problem`, what the encoder raised, or the size over `payload_bytes_max`)."""
    problem = output_problem(value)
    if problem is not None:
        return cut_text(f"the output cannot be sent: {problem}")
    try:
        output = msgspec.json.encode(value)
    except Exception as error:
        return cut_text(f"the output cannot be encoded as JSON: {render_error(error)}")
    if len(output) > limits.payload_bytes_max:
        return f"the output is {len(output)} bytes; the limit is {limits.payload_bytes_max} bytes"
    return output


def walked_problem(value: object, depth_max: int) -> str | None:
    """`output_problem` by the walk that names the place (every value takes it the same way;
    `output_problem` skips it for plain values, which it finds no problem in)."""
    stack: list[tuple[str, object, int]] = [("$", value, 0)]
    visited = 0
    while stack:
        path, item, depth = stack.pop()
        visited += 1
        if isinstance(item, float) and not math.isfinite(item):
            return f"{path} is {item!r}, which JSON cannot hold (return a finite number or null)"
        if isinstance(item, _BYTES_TYPES):
            return (
                f"{path} is {type(item).__name__}, which JSON cannot hold "
                "(decode it to text, or encode it as base64 text yourself)"
            )
        children = _children(item)
        if children is None:
            continue
        if depth + 1 > depth_max:
            return f"{path} nests deeper than {depth_max} levels (json_depth_max)"
        pending = [(path + suffix, child, depth + 1) for suffix, child in children]
        stack.extend(reversed(pending))
    assert visited >= 1
    return None


_PLAIN_LEAVES: Final = (str, int, bool, type(None))


def _plain_json(value: object, depth_max: int) -> bool:
    """Whether `value` is plainly a step output: dicts, lists and tuples (exactly those types)
    no deeper than `depth_max`, of strings, integers, booleans, None and finite floats. False
    means "walk it with paths" (`output_problem`), not that it is refused: it costs no path
    text for what most handlers return."""
    stack: list[tuple[object, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        kind = type(item)
        if kind in _PLAIN_LEAVES:
            continue
        if isinstance(item, float) and kind is float:
            if not math.isfinite(item):
                return False
            continue
        children: Iterable[object]
        if isinstance(item, dict) and kind is dict:
            children = item.values()
        elif isinstance(item, list | tuple) and (kind is list or kind is tuple):
            children = item
        else:
            return False
        if depth + 1 > depth_max:
            return False
        stack.extend((child, depth + 1) for child in children)
    return True
