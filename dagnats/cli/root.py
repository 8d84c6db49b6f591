"""The `dagnats` app's root: its help, `--version` and the connection options every command
takes (`--creds`, TLS), in an app with no command yet (`new_app`). Both the whole app
(`dagnats/cli/assembly.py`) and serve's own (`dagnats/cli/__init__.main`) start from it.
Imports no command module.
"""

from __future__ import annotations

import importlib.metadata
import os
from pathlib import Path
from typing import Annotated, Final

import typer

from dagnats.runtime import credentials

DISTRIBUTION: Final = "dagnats"
APP_HELP: Final = "A durable DAG workflow engine on NATS JetStream alone."


def new_app() -> typer.Typer:
    """The `dagnats` app with its root options and no command."""
    app = typer.Typer(
        name="dagnats", help=APP_HELP, no_args_is_help=True, pretty_exceptions_enable=False
    )
    app.callback()(root)
    return app


def version() -> str:
    """The installed distribution's version ("unknown" when it is not installed)."""
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _print_version(value: bool) -> None:
    if value:
        print(f"dagnats {version()}")
        raise typer.Exit(0)


def root(
    show_version: Annotated[
        bool,
        typer.Option(
            "--version",
            help="Print the version and exit.",
            callback=_print_version,
            is_eager=True,
        ),
    ] = False,
    creds: Annotated[
        Path | None,
        typer.Option(
            "--creds",
            help="Credential file for NATS (default: the data dir's).",
            envvar=credentials.CREDS_ENV,
        ),
    ] = None,
    tls_cert: Annotated[
        Path | None,
        typer.Option("--tls-cert", help="Client TLS cert.", envvar=credentials.TLS_CERT_ENV),
    ] = None,
    tls_key: Annotated[
        Path | None,
        typer.Option("--tls-key", help="Client TLS key.", envvar=credentials.TLS_KEY_ENV),
    ] = None,
    tls_ca: Annotated[
        Path | None,
        typer.Option("--tls-ca", help="CA of the NATS server.", envvar=credentials.TLS_CA_ENV),
    ] = None,
) -> None:
    """A durable DAG workflow engine on NATS JetStream alone.

    The connection options (`--creds`, TLS) hold for every command; runtime/credentials reads
    them from the environment, where they are paths, never secrets.
    """
    for name, value in (
        (credentials.CREDS_ENV, creds),
        (credentials.TLS_CERT_ENV, tls_cert),
        (credentials.TLS_KEY_ENV, tls_key),
        (credentials.TLS_CA_ENV, tls_ca),
    ):
        if value is not None:
            os.environ[name] = str(value)
