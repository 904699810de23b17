"""The `pgqueue` command."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import click

from pgqueue import PgQueue
from pgqueue.codec import parse_json_object
from pgqueue.config import describe_dsn, resolve_dsn
from pgqueue.embedded import EmbeddedServer
from pgqueue.migrations import apply_roles, check_schema, migrate, pending
from pgqueue.sqlfiles import roles_sql

from .common import dsn_option, friendly_errors, parse_when, quiet_pool_finalizer
from .cron_cmd import cron_group
from .dashboard_cmd import dashboard_cmd
from .limits_cmd import limits_group
from .loading import load_app
from .messages_cmd import send_cmd, state_cmd, update_cmd
from .retention_cmd import prune_cmd, retention_group
from .runs_cmd import event_group, queue_group, runs_group
from .sessions_cmd import sessions_group
from .status_cmd import status_cmd, top_cmd
from .tail_cmd import tail_cmd
from .tasks_cmd import tasks_cmd
from .usage_cmd import usage_cmd
from .wait_cmd import wait_cmd
from .worker_cmd import worker_cmd

F = TypeVar("F", bound=Callable[..., Any])

@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="pgqueue")
def main() -> None:
    """pgqueue: durable tasks and workflows on PostgreSQL."""
    sys.unraisablehook = quiet_pool_finalizer


main.add_command(worker_cmd)
runs_group.add_command(wait_cmd)
runs_group.add_command(tail_cmd)
for command in (send_cmd, update_cmd, state_cmd):
    runs_group.add_command(command)
main.add_command(runs_group)
main.add_command(status_cmd)
main.add_command(top_cmd)
main.add_command(limits_group)
main.add_command(tasks_cmd)
main.add_command(event_group)
main.add_command(cron_group)
main.add_command(queue_group)
main.add_command(dashboard_cmd)
main.add_command(retention_group)
main.add_command(prune_cmd)
main.add_command(usage_cmd)
main.add_command(sessions_group)


@main.command("roles")
@dsn_option
@click.option("--print", "print_only", is_flag=True, help="Print the SQL (sql/roles.sql) instead of running it.")
@friendly_errors
def roles_cmd(dsn: str | None, print_only: bool) -> None:
    """Create the roles pgqueue_producer, pgqueue_worker and pgqueue_reader and grant them what
    they need (run as the schema's owner, after each migrate; see docs/deployment.md)."""
    if print_only:
        click.echo(roles_sql(), nl=False)
        return
    app = PgQueue(dsn)
    apply_roles(app.dsn)
    click.echo(f"roles pgqueue_producer, pgqueue_worker, pgqueue_reader granted at {describe_dsn(app.dsn)}")


@main.command("migrate")
@dsn_option
@click.option("--check", is_flag=True, help="Only check: exit 1 when migrations are pending.")
@friendly_errors
def migrate_cmd(dsn: str | None, check: bool) -> None:
    """Create or upgrade the pgqueue schema (safe to run concurrently)."""
    app = PgQueue(dsn)
    if check:
        missing = pending(app.dsn)
        if missing:
            click.echo(f"{len(missing)} pending migration(s): {', '.join(missing)}; run `pgqueue migrate`")
            sys.exit(1)
        check_schema(app.dsn)
        click.echo("schema is up to date")
        return
    applied = migrate(app.dsn)
    target = describe_dsn(app.dsn)
    if applied:
        click.echo(f"applied {len(applied)} migration(s) to {target}: {', '.join(applied)}")
    else:
        click.echo(f"schema at {target} is up to date")


@main.command("dev")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None,
              help="Folder of the embedded database (default ./.pgqueue/postgres, or PGQUEUE_DATA_DIR).")
@click.option("--stop", is_flag=True, help="Stop the embedded database.")
@friendly_errors
def dev_cmd(data_dir: Path | None, stop: bool) -> None:
    """Start (or reuse) a local database for development, migrate it, print its DSN.

    With PGQUEUE_DSN or DATABASE_URL set, that database is migrated instead.
    """
    configured = resolve_dsn()
    if stop:
        server = EmbeddedServer.at(data_dir)
        if server.stop():
            click.echo(f"embedded PostgreSQL in {server.data_dir} stopped")
        else:
            click.echo(f"embedded PostgreSQL in {server.data_dir} is not running: nothing to stop")
        return
    if configured:
        dsn = configured
        click.echo(f"using the configured database {describe_dsn(dsn)}")
    else:
        server = EmbeddedServer.at(data_dir)
        dsn = server.ensure_running()
        click.echo(f"embedded PostgreSQL running in {server.data_dir}")
    applied = migrate(dsn)
    click.echo(f"schema ready ({len(applied)} migration(s) applied now)")
    click.echo(f"export PGQUEUE_DSN={dsn}")


def enqueue_options(fn: F) -> F:
    for option in reversed([
        click.option("--app", "app_path", default=None, envvar="PGQUEUE_APP",
                     help="MODULE:ATTR of your PgQueue app, to validate inputs against the task's model "
                          "before anything is written."),
        click.option("--queue", default=None, help="Queue (default: the task's)."),
        click.option("--priority", type=int, default=None, help="Higher runs first."),
        click.option("--run-at", default=None, help="ISO time with zone to run at."),
        click.option("--delay", type=float, default=None, help="Seconds to wait before running."),
        click.option("--tag", "tags", multiple=True, help="Tag (repeatable)."),
        dsn_option,
    ]):
        fn = option(fn)
    return fn


def _app_for(app_path: str | None, dsn: str | None) -> PgQueue:
    if app_path is None:
        return PgQueue(dsn)
    app = load_app(app_path)
    if dsn:
        app.db.use_dsn(dsn)
    return app


@main.command("enqueue")
@click.argument("task")
@click.option("--input", "input_text", default="{}",
              help="JSON object of the task's arguments; @FILE reads it from a file, - from stdin.")
@click.option("--idempotency-key", default=None, help="A second enqueue with this key returns the first run.")
@enqueue_options
@friendly_errors
def enqueue_cmd(task: str, input_text: str, idempotency_key: str | None, app_path: str | None,
                dsn: str | None, queue: str | None, priority: int | None, run_at: str | None,
                delay: float | None, tags: tuple[str, ...]) -> None:
    """Enqueue one run of TASK and print its id."""
    app = _app_for(app_path, dsn)
    if input_text == "-":
        input_text = sys.stdin.read()
    elif input_text.startswith("@"):
        try:
            input_text = Path(input_text[1:]).read_text(encoding="utf-8")
        except OSError as exc:
            raise click.BadParameter(f"cannot read {input_text[1:]}: {exc.strerror}") from None
    handle = app.enqueue(task, parse_json_object(input_text, "--input"), queue=queue, priority=priority,
                         run_at=parse_when(run_at), delay=delay, idempotency_key=idempotency_key,
                         tags=tags)
    click.echo(handle.id if handle.created
               else f"{handle.id} (an existing run: same idempotency key, or the task's debounce or singleton)")
    _note_unchecked(app, task)


def _note_unchecked(app: PgQueue, task: str) -> None:
    if task not in app.tasks:
        click.echo(f"note: the input was not checked against {task}'s model (a bad one fails when the run "
                   "starts); pass --app MODULE:ATTR or set PGQUEUE_APP to check it first", err=True)


def _json_lines(path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, input) per non-blank line; `where` names the line as every error about it does."""
    stream = sys.stdin if path == "-" else open(path, encoding="utf-8")  # noqa: SIM115
    with stream:
        for number, line in enumerate(stream, 1):
            if line.strip():
                where = f"line {number} of {'stdin' if path == '-' else path}"
                yield where, parse_json_object(line, where)


@main.command("enqueue-many")
@click.argument("task")
@click.argument("file", default="-")
@enqueue_options
@friendly_errors
def enqueue_many_cmd(task: str, file: str, app_path: str | None, dsn: str | None, queue: str | None,
                     priority: int | None, run_at: str | None, delay: float | None,
                     tags: tuple[str, ...]) -> None:
    """Enqueue one run of TASK per JSON line of FILE (or stdin), in one transaction."""
    app = _app_for(app_path, dsn)
    lines = list(_json_lines(file))
    if task in app.tasks:  # each line checked here, so that an error names its line (not its index)
        for where, item in lines:
            app.tasks[task].codec.encode_item(item, f" ({where})")
    inputs = [item for _, item in lines]
    with click.progressbar(length=len(inputs), label=f"enqueueing {task}", file=sys.stderr) as bar:
        done = [0]

        def progress(count: int) -> None:
            bar.update(count - done[0])
            done[0] = count

        handles = app.enqueue_many(task, inputs, queue=queue, priority=priority, run_at=parse_when(run_at),
                                   delay=delay, tags=tags, progress=progress)
    if handles:
        click.echo(f"enqueued {len(handles)} runs of {task} (ids {handles[0].id}..{handles[-1].id})")
        _note_unchecked(app, task)
    else:
        click.echo("no input lines: nothing enqueued")
