"""The whole `dagnats` app: every command registered (`app`), as `dagnats.cli.main` runs it
for any command but `serve` (which gets an app of its own: `dagnats/cli/__init__`).

Sub-command modules (`serve`, `workflows`, `runs`, `events`, `approvals`, `projections`,
`sim`, `schema`; with `render` and `chains_render` for output) import `dagnats.cli.common` and
the rest of the project (client, runtime, sim, kernel, projections), never `dagnats.cli`
itself; only this module imports them all. Every command that touches NATS or the data dir
takes `--data-dir` (and `$DAGNATS_DATA_DIR`): those that do not declare it themselves get it
here (`with_data_dir`, before the app is built), where it sets `$DAGNATS_DATA_DIR` for the
command (the connection reads the local serve's `nats.url` from there).
"""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Callable, Iterator
from typing import Any, Final

import typer
import typer.models

from dagnats.cli import (
    approvals,
    cluster,
    dlq,
    events,
    lifecycle,
    projections,
    runs,
    schema,
    serve,
    sim,
    status,
    triggers,
    workers,
    workflows,
)
from dagnats.cli.common import DataDirOption
from dagnats.cli.credentials import credential_app
from dagnats.cli.root import new_app
from dagnats.runtime.connection import DATA_DIR_ENV

# Commands that touch neither NATS nor a data dir (the demo makes its own throwaway one).
OFFLINE_COMMANDS: Final = frozenset(
    {workflows.workflow_validate, schema.schema, sim.sim_command, serve.demo}
)
DATA_DIR_PARAM: Final = "data_dir"

app = new_app()
workflow_app = typer.Typer(
    help="Register, validate, list and show workflows; print their JSON Schema.",
    no_args_is_help=True,
)
run_app = typer.Typer(help="Start, inspect, wait for and cancel runs.", no_args_is_help=True)
event_app = typer.Typer(help="Publish external events.", no_args_is_help=True)


# The order of registration is the order of `--help`.
app.add_typer(workflow_app, name="workflow")
app.add_typer(run_app, name="run")
app.command("sim")(sim.sim_command)
projections.register(app, run_app)  # query, projection, history export, replay, run audit
approvals.register(app)  # approval list|show|approve|reject
serve.register(app)  # serve, worker
status.register(app)  # status
workflows.register(workflow_app)  # workflow validate|register|list|show
schema.register(workflow_app)  # workflow schema
runs.register(run_app)  # run start|show|list|history|wait|cancel|signal
lifecycle.register(run_app)  # run retry|rerun|terminate|delete
lifecycle.register_workflow(workflow_app)  # workflow delete
dlq.register(app)  # dlq list|show|retry|discard
workers.register(app)  # workers list
app.add_typer(event_app, name="event")
events.register(event_app)  # event publish
app.add_typer(credential_app, name="credential")  # credential list|add-approver|add-worker
cluster.register_credentials(credential_app)  # credential export|import
app.add_typer(cluster.admin_app, name="admin")  # admin replicas|stepdown
trigger_app = typer.Typer(help="Triggers: cron, subjects, webhooks, http.", no_args_is_help=True)
app.add_typer(trigger_app, name="trigger")
triggers.register(trigger_app)  # trigger test|list|history|fire|enable|disable
app.command()(serve.demo)


def _command_infos(typer_app: typer.Typer) -> Iterator[typer.models.CommandInfo]:
    yield from typer_app.registered_commands
    for group in typer_app.registered_groups:
        if group.typer_instance is not None:
            yield from _command_infos(group.typer_instance)


def with_data_dir(typer_app: typer.Typer) -> typer.Typer:
    """Give `--data-dir` (env `DAGNATS_DATA_DIR`) to every command that touches NATS or the
    data dir and does not declare it itself; given, it sets `$DAGNATS_DATA_DIR` for the
    command, which is where the local serve's `nats.url` (and the query tables) are found."""
    for info in _command_infos(typer_app):
        callback = info.callback
        if callback is None or callback in OFFLINE_COMMANDS:
            continue
        if DATA_DIR_PARAM not in inspect.signature(callback).parameters:
            info.callback = _setting_data_dir(callback)
    return typer_app


def _setting_data_dir(callback: Callable[..., Any]) -> Callable[..., Any]:
    """`callback` with a `data_dir` option that sets `$DAGNATS_DATA_DIR` before it runs."""
    signature = inspect.signature(callback, eval_str=True)
    option = inspect.Parameter(
        DATA_DIR_PARAM, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=DataDirOption
    )

    @functools.wraps(callback)
    def run(*args: Any, **kwargs: Any) -> Any:
        data_dir = kwargs.pop(DATA_DIR_PARAM, None)
        if data_dir is not None:
            os.environ[DATA_DIR_ENV] = str(data_dir)
        return callback(*args, **kwargs)

    run.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[*signature.parameters.values(), option]
    )
    run.__annotations__ = {**callback.__annotations__, DATA_DIR_PARAM: DataDirOption}
    return run


with_data_dir(app)


__all__ = ["OFFLINE_COMMANDS", "app"]
