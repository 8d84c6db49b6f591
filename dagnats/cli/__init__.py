"""cli/: the `dagnats` command (typer + rich); this `__init__` assembles the app and `main`.

Every command takes `--json` for machine output. Errors are one readable line plus a hint, on
stderr, with exit code 1 (2 for usage errors). `workflow validate` works offline.

Sub-command modules (`serve`, `workflows`, `runs`, `events`, `approvals`, `projections`,
`sim`; with `render` and `chains_render` for output) import `dagnats.cli.common` and the rest
of the project (client, runtime, sim, kernel, projections), never `dagnats.cli` itself; only
this `__init__` imports them. Nothing in the project imports the CLI but the console script
(`dagnats = "dagnats.cli:main"`), `python -m dagnats.cli` and tests.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from dagnats.cli import approvals, events, projections, runs, serve, sim, workflows
from dagnats.runtime import credentials

app = typer.Typer(
    name="dagnats",
    help="A durable DAG workflow engine on NATS JetStream alone.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
workflow_app = typer.Typer(
    help="Register, validate, list and show workflows.", no_args_is_help=True
)
run_app = typer.Typer(help="Start, inspect, wait for and cancel runs.", no_args_is_help=True)
event_app = typer.Typer(help="Publish external events.", no_args_is_help=True)

@app.callback()
def connection_options(
    creds: Annotated[
        Path | None,
        typer.Option("--creds", help="Credential file for NATS (default: the data dir's).",
                     envvar=credentials.CREDS_ENV),
    ] = None,
    tls_cert: Annotated[Path | None, typer.Option("--tls-cert", help="Client TLS cert.",
                                                  envvar=credentials.TLS_CERT_ENV)] = None,
    tls_key: Annotated[Path | None, typer.Option("--tls-key", help="Client TLS key.",
                                                 envvar=credentials.TLS_KEY_ENV)] = None,
    tls_ca: Annotated[Path | None, typer.Option("--tls-ca", help="CA of the NATS server.",
                                                envvar=credentials.TLS_CA_ENV)] = None,
) -> None:
    """Connection options of every command (runtime/credentials reads them from the env)."""
    for name, value in ((credentials.CREDS_ENV, creds), (credentials.TLS_CERT_ENV, tls_cert),
                        (credentials.TLS_KEY_ENV, tls_key), (credentials.TLS_CA_ENV, tls_ca)):
        if value is not None:
            os.environ[name] = str(value)  # a path, never a secret


# The order of registration is the order of `--help`.
app.add_typer(workflow_app, name="workflow")
app.add_typer(run_app, name="run")
app.command("sim")(sim.sim_command)
projections.register(app, run_app)  # query, projection, history export, replay, run audit
approvals.register(app)  # approval list|show|approve|reject
serve.register(app)  # serve, worker
workflows.register(workflow_app)  # workflow validate|register|list|show
runs.register(run_app)  # run start|show|list|history|wait|cancel|signal
app.add_typer(event_app, name="event")
events.register(event_app)  # event publish
app.command()(serve.demo)


def main() -> None:
    """Entry point of the `dagnats` console script."""
    app()


__all__ = ["app", "main"]
