"""Plain coercion of the CLI's plain options, so that a command does not import pydantic.

typer (0.29) coerces every option's value through a pydantic `TypeAdapter`, built when the
option is first parsed: the first option parsed imports pydantic (about 0.1 s), and every
option builds a schema. Nearly all of the `dagnats` options are plain: `str`, `int`, `float`
and `Path` with no range, parser or path checks beyond typer's own. For those, `install`
gives typer's parameters a coercion of their own: a `str` as it is, an `int` or a `float`
written as plain digits converted by Python, a `Path` made from its text and then checked
by typer's own path rules (`coerce_cli_path`: exists, file or dir, readable, ...). Anything
else (another type, a value written another way, a bad value) goes to typer's own coercion,
so its answers and its errors stay typer's. `dagnats serve` starts about 0.1 s sooner with
it (issue 14, `bench.recovery`), and every other command too.

`install` changes typer's parameter class in this process only, once; it returns False and
changes nothing for a typer version it does not know (`TYPER_KNOWN`) or without the internals
it uses: the CLI then works as typer made it, only slower (and the tests that need it skip,
saying the new version is to be checked). tests/test_cli_plain_params.py compares its answers
with typer's own for every option of the app.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

PLAIN_INT: Final = re.compile(r"[+-]?[0-9]{1,18}")  # (longer: typer's own, and its errors)
PLAIN_FLOAT: Final = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
PLAIN_TYPES: Final = (str, int, float, bool)  # a bool: only when already a bool
INSTALLED_MARK: Final = "_dagnats_plain"
TYPER_KNOWN: Final = ("0.29.",)  # the typer versions whose internals this module knows


def install() -> bool:
    """Make typer's parameters coerce plain options without pydantic (see the module's
    docstring); True when installed (now or before), False when typer is not the one known."""
    try:
        import typer
        from typer import _coercion, _param_types, core
        from typer._click.exceptions import BadParameter
    except ImportError:
        return False
    if not str(getattr(typer, "__version__", "")).startswith(TYPER_KNOWN):
        return False
    param_class = getattr(core, "_TyperParameter", None)
    original = getattr(param_class, "get_runtime_param", None)
    needed = (
        getattr(_coercion, "RuntimeParam", None), getattr(_coercion, "build_runtime_param", None),
        getattr(_param_types, "coerce_cli_path", None),
    )  # fmt: skip
    if param_class is None or original is None or None in needed:
        return False
    if getattr(original, INSTALLED_MARK, False):
        return True
    plain_class = _plain_class(_coercion.RuntimeParam, _param_types.coerce_cli_path, BadParameter)

    def get_runtime_param(self: Any) -> Any:
        if getattr(self, "_runtime_param", None) is None:
            descriptor = getattr(self, "type_descriptor", None)
            if descriptor is not None and is_plain(descriptor):
                self._runtime_param = plain_class(
                    parameter_info=descriptor.parameter_info,
                    annotation=descriptor.annotation,
                    typer_own=lambda: _coercion.build_runtime_param(descriptor),
                )
        return original(self)

    setattr(get_runtime_param, INSTALLED_MARK, True)
    param_class.get_runtime_param = get_runtime_param
    return True


def is_plain(descriptor: Any) -> bool:
    """Whether an option's type descriptor is one this module coerces: `str`, `int`, `float`,
    `bool` or a `Path`, with no file annotation, parser, click type, range, path type or dash."""
    info = descriptor.parameter_info
    if descriptor.file_annotation is not None or info.parser is not None:
        return False
    if getattr(info, "click_type", None) is not None:
        return False
    if getattr(info, "min", None) is not None or getattr(info, "max", None) is not None:
        return False
    annotation = descriptor.annotation
    if annotation in PLAIN_TYPES:
        return True
    if getattr(info, "path_type", None) is not None or getattr(info, "allow_dash", False):
        return False  # (typer's own: "-" and str/bytes paths)
    return isinstance(annotation, type) and issubclass(annotation, Path)


def _plain_class(runtime_param: type[Any], coerce_cli_path: Any, refused: Any) -> type[Any]:
    """The plain coercion, a subclass of typer's `RuntimeParam` (made once, on install)."""

    @dataclass(frozen=True)
    class PlainRuntimeParam(runtime_param):  # type: ignore[misc]
        typer_own: Any = None  # () -> typer's own RuntimeParam of the option, built lazily

        def _coerce_value(self, value: Any, param: Any, ctx: Any) -> Any:
            plain = plain_value(self.annotation, value)
            if plain is None:
                return self.typer_own().coerce(value, param=param, ctx=ctx)
            if isinstance(plain, Path):
                try:
                    return coerce_cli_path(
                        plain, self.parameter_info, path_type=self.annotation, param=param, ctx=ctx
                    )
                except (ValueError, refused):  # typer's own answers, with the text as given
                    return self.typer_own().coerce(value, param=param, ctx=ctx)
            return plain

    return PlainRuntimeParam


def plain_value(annotation: Any, value: object) -> object | None:
    """`value` as `annotation` when this module coerces it itself, else None (typer does)."""
    if type(value) is annotation:
        return value
    if not isinstance(value, str):
        return None
    if annotation is str:
        return value
    if annotation is int:
        return int(value) if PLAIN_INT.fullmatch(value) else None
    if annotation is float:
        return float(value) if PLAIN_FLOAT.fullmatch(value) else None
    if isinstance(annotation, type) and issubclass(annotation, Path):
        path: Path = annotation(value)
        return path
    return None


__all__ = ["install", "is_plain", "plain_value"]
