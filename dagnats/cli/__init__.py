"""cli/: the `dagnats` command (typer + rich); `main` runs it.

Every command takes `--json` for machine output. Errors are one readable line plus a hint, on
stderr, with exit code 1 (2 for usage errors). `workflow validate` and `workflow schema` work
offline. `dagnats --version` prints the version; `--install-completion` / `--show-completion`
set up shell completion (typer's).

The whole app (`app`, every command registered) is assembled in `dagnats/cli/assembly.py`,
imported on first use of `app` or `OFFLINE_COMMANDS` here. `dagnats serve` runs in an app of
its own (the root options and `serve`), so that a (re)starting serve does not first import
every other command's modules (the client, the simulator, rich's tables and progress bars):
its engine resumes runs sooner (issue 14, `bench.recovery`). Nothing in the project imports
the CLI but the console script (`dagnats = "dagnats.cli:main"`), `python -m dagnats.cli` and
tests.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final

from dagnats.cli import plain_params
from dagnats.cli.root import version

if TYPE_CHECKING:
    from dagnats.cli.assembly import OFFLINE_COMMANDS, app

SERVE_COMMAND: Final = "serve"
# The root options that take a value (`--creds PATH`): their value is not the command.
ROOT_VALUE_OPTIONS: Final = frozenset({"--creds", "--tls-cert", "--tls-key", "--tls-ca"})
ASSEMBLED: Final = frozenset({"app", "OFFLINE_COMMANDS"})


def command_of(args: Sequence[str]) -> str | None:
    """The command named in `args` (the first word past the root options), None if none."""
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg in ROOT_VALUE_OPTIONS:
            skip = True
        elif not arg.startswith("-"):
            return arg
    return None


def main() -> None:
    """Entry point of the `dagnats` console script."""
    plain_params.install()  # plain options coerced without importing pydantic
    if command_of(sys.argv[1:]) == SERVE_COMMAND:
        from dagnats.cli.root import new_app
        from dagnats.cli.serve import serve

        serve_app = new_app()
        serve_app.command()(serve)
        serve_app()
        return
    from dagnats.cli.assembly import app

    app()


def __getattr__(name: str) -> object:
    """`app` and `OFFLINE_COMMANDS`, from `dagnats/cli/assembly.py` on first use."""
    if name in ASSEMBLED:
        from dagnats.cli import assembly

        return getattr(assembly, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["OFFLINE_COMMANDS", "app", "command_of", "main", "version"]
