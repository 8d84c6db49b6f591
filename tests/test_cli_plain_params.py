"""dagnats/cli/plain_params.py: the CLI's plain options coerced without pydantic, with the
same answers and errors as typer's own coercion, for every option of the app."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Annotated, Any, cast

import hypothesis.strategies as st
import pytest
import typer
import typer.main
from hypothesis import HealthCheck, given, settings
from typer._click.exceptions import BadParameter
from typer._coercion import build_runtime_param

from dagnats.cli import plain_params
from dagnats.cli.assembly import app

INSTALLED = plain_params.install()
needs_known_typer = pytest.mark.skipif(
    not INSTALLED,
    reason=f"typer {typer.__version__} is not one dagnats/cli/plain_params.py knows: check its "
    "internals (typer._coercion, _param_types) and add it to TYPER_KNOWN",
)


def _options() -> list[tuple[Any, Any]]:
    """(command, parameter) of every plain option of the app, one per distinct kind."""
    found: dict[tuple[object, ...], tuple[Any, Any]] = {}

    def walk(command: Any) -> None:
        for param in command.params:
            descriptor = getattr(param, "type_descriptor", None)
            if descriptor is not None and plain_params.is_plain(descriptor):
                info = descriptor.parameter_info
                kind = (descriptor.annotation, info.exists, info.file_okay, info.dir_okay,
                        info.readable, info.writable, info.resolve_path)  # fmt: skip
                found.setdefault(kind, (command, param))
        for sub in getattr(command, "commands", {}).values():
            walk(sub)

    walk(typer.main.get_command(app))
    return list(found.values())


OPTIONS = _options()


def _answer(runtime: Any, value: object, param: Any, command: Any) -> tuple[str, object]:
    ctx = command.make_context(command.name or "dagnats", [], resilient_parsing=True)
    try:
        result = runtime.coerce(value, param=param, ctx=ctx)
    except BadParameter as error:
        return "refused", error.message
    except ValueError as error:  # typer's own too, e.g. a path with a NUL byte (os.stat)
        return type(error).__name__, str(error)
    return type(result).__name__, repr(result)  # (repr: nan equals nan)


TEXT = st.one_of(
    st.from_regex(plain_params.PLAIN_INT, fullmatch=True),
    st.from_regex(plain_params.PLAIN_FLOAT, fullmatch=True),
    st.text(max_size=12),
    st.sampled_from(["", " 1", "1 ", "1_000", "0x10", "1e3", "inf", "nan", "-", ".", "~/x",
                     "a/../b", "./c", "/tmp", "007", "+5", "-0", "1.", ".5"]),
)


@needs_known_typer
def test_the_app_has_plain_options_of_every_plain_type() -> None:
    annotations = {param.type_descriptor.annotation for _, param in OPTIONS}
    assert {str, int, float, bool, Path} <= annotations, annotations


@needs_known_typer
@pytest.mark.parametrize(("command", "param"), OPTIONS, ids=lambda item: getattr(item, "name", ""))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=TEXT)
def test_a_plain_option_is_coerced_as_typer_coerces_it(command: Any, param: Any, text: str) -> None:
    """Same value and type, or both refused (with typer's own message: plain_params leaves
    every value it does not take to typer)."""
    descriptor = param.type_descriptor
    ours = param.get_runtime_param()
    assert type(ours).__name__ == "PlainRuntimeParam", type(ours)
    typers = build_runtime_param(descriptor)
    value: object = text
    if descriptor.annotation is bool:
        value = text.startswith("1")  # a flag's value is a bool by then
    assert _answer(ours, value, param, command) == _answer(typers, value, param, command)


def test_a_plain_option_with_a_bad_value_gets_typers_error() -> None:
    done = subprocess.run(
        [sys.executable, "-c", "from dagnats.cli import main; main()", "serve", "--nats-port",
         "twelve"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "--nats-port" in done.stderr and "integer" in done.stderr, done.stderr


@needs_known_typer
def test_serve_parses_its_options_without_importing_pydantic(tmp_path: Path) -> None:
    """`dagnats serve` with a port out of range: parsed, refused, exit 2; pydantic never
    imported on the way (typer would import it for the first option it coerces)."""
    script = (
        "import sys\n"
        "from dagnats.cli import main\n"
        "try:\n"
        "    main()\n"
        "finally:\n"
        "    print('pydantic' in sys.modules, file=sys.stderr)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, "serve", "--data-dir", str(tmp_path), "--nats-port",
         "70000", "--no-http"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "70000" in done.stderr, done.stderr
    assert done.stderr.strip().splitlines()[-1] == "False", done.stderr


@needs_known_typer
def test_install_is_idempotent_and_marks_typers_class() -> None:
    import typer.core

    assert plain_params.install() is True
    assert plain_params.install() is True
    method = typer.core._TyperParameter.get_runtime_param
    assert getattr(method, plain_params.INSTALLED_MARK, False)


@pytest.mark.parametrize(
    ("annotation", "text", "expected"),
    [(int, "42", 42), (int, "-7", -7), (float, "2.5", 2.5), (str, "x y", "x y"),
     (int, "4.2", None), (int, " 1", None), (int, "9" * 19, None), (float, "inf", None),
     (Path, "a/b", Path("a/b")),
     (bool, "yes", None), (bool, True, True)],
)
def test_plain_value_takes_only_plain_text(annotation: Any, text: object, expected: object) -> None:
    assert plain_params.plain_value(annotation, text) == expected


@needs_known_typer
def test_a_refused_path_is_answered_by_typer_with_the_text_as_given(tmp_path: Path) -> None:
    """A `Path` option with typer's own checks (exists): the refusal names the text as the
    user wrote it (typer's own message), not the normalised path."""
    app = typer.Typer()

    @app.command()
    def read(given: Annotated[Path, typer.Option(exists=True)]) -> None:
        print(given)

    command = typer.main.get_command(app)
    [param] = [p for p in command.params if p.name == "given"]
    param = cast(Any, param)
    assert plain_params.is_plain(param.type_descriptor)
    missing = f"./{tmp_path.name}-missing/x/"
    ours = param.get_runtime_param()
    typers = build_runtime_param(param.type_descriptor)
    assert _answer(ours, missing, param, command) == _answer(typers, missing, param, command)
    assert missing in str(_answer(ours, missing, param, command)[1])
    found = tmp_path / "there"
    found.write_text("x")
    assert _answer(ours, str(found), param, command) == ("PosixPath", repr(found))
