"""`pgqueue cron ...`: manage cron schedules at runtime."""

from __future__ import annotations

import dataclasses
import json

import click

from pgqueue import PgQueue
from pgqueue.codec import parse_json_object
from pgqueue.cron import MISFIRE_POLICIES, Schedule

from .common import cell, dsn_option, friendly_errors, json_option, print_json, table
from .loading import load_app


@click.group("cron")
def cron_group() -> None:
    """Cron schedules: add, list, pause, resume, delete, trigger."""


@cron_group.command("add")
@click.argument("name")
@click.argument("expression")
@click.argument("task")
@click.option("--input", "input_text", default="{}", help="JSON object: the input of every run.")
@click.option("--timezone", default="UTC", show_default=True, help="IANA time zone of the expression.")
@click.option("--queue", default=None, help="Queue (default: the task's).")
@click.option("--priority", type=int, default=None, help="Priority (default: the task's).")
@click.option("--misfire", type=click.Choice(MISFIRE_POLICIES), default="run_once", show_default=True,
              help="Ticks missed while no worker ran: skip them, run once, or catch up.")
@click.option("--catch-up-limit", type=click.IntRange(min=1), default=None, help="Most missed ticks caught up.")
@click.option("--app", "app_path", default=None, envvar="PGQUEUE_APP",
              help="MODULE:ATTR of your app, to validate task and input (else the input is not checked).")
@dsn_option
@friendly_errors
def add_cmd(name: str, expression: str, task: str, input_text: str, timezone: str, queue: str | None,
            priority: int | None, misfire: str, catch_up_limit: int | None, app_path: str | None,
            dsn: str | None) -> None:
    """Create (or replace) schedule NAME running TASK on EXPRESSION ('0 3 * * *'; 6 fields = seconds first).

    A schedule added or changed here is not overwritten by the schedules declared in code."""
    data = parse_json_object(input_text, "--input")
    app = load_app(app_path) if app_path else PgQueue(dsn)
    if dsn:
        app.db.use_dsn(dsn)
    if task in app.tasks:
        data = json.loads(app.tasks[task].codec.encode_item(data))
    schedule = Schedule(name, expression, task, data, timezone, queue, priority, misfire, catch_up_limit)
    app.cron_add(schedule)
    click.echo(f"schedule {name!r} saved: {expression} ({timezone}) -> {task}")
    if task not in app.tasks:
        click.echo(f"note: the input was not checked against {task}'s model (a bad one fails at every tick); "
                   "pass --app MODULE:ATTR or set PGQUEUE_APP to check it first", err=True)


@cron_group.command("list")
@json_option
@dsn_option
@friendly_errors
def list_cmd(as_json: bool, dsn: str | None) -> None:
    """Schedules with their next and last fire times."""
    with PgQueue(dsn) as app:
        rows = app.cron_list()
    if as_json:
        print_json([dataclasses.asdict(r) for r in rows])
        return
    table(["name", "expression", "zone", "task", "enabled", "misfire", "next fire", "last fire", "source"],
           [(r.name, r.expression, r.timezone, r.task, "yes" if r.enabled else "paused", r.misfire_policy,
             cell(r.next_fire_at) if r.next_fire_at else "(next pass)", r.last_fire_at, r.source) for r in rows])


@cron_group.command("pause")
@click.argument("name")
@dsn_option
@friendly_errors
def pause_cmd(name: str, dsn: str | None) -> None:
    """Stop firing NAME (its row stays)."""
    PgQueue(dsn).cron_pause(name)
    click.echo(f"schedule {name!r} paused")


@cron_group.command("resume")
@click.argument("name")
@dsn_option
@friendly_errors
def resume_cmd(name: str, dsn: str | None) -> None:
    """Fire NAME again from its next tick (ticks missed while paused are not caught up)."""
    PgQueue(dsn).cron_resume(name)
    click.echo(f"schedule {name!r} resumed")


@cron_group.command("delete")
@click.argument("name")
@dsn_option
@friendly_errors
def delete_cmd(name: str, dsn: str | None) -> None:
    """Delete NAME (a schedule declared in code comes back when a worker starts)."""
    PgQueue(dsn).cron_delete(name)
    click.echo(f"schedule {name!r} deleted")


@cron_group.command("trigger")
@click.argument("name")
@dsn_option
@friendly_errors
def trigger_cmd(name: str, dsn: str | None) -> None:
    """Run NAME's task now, outside its ticks."""
    handle = PgQueue(dsn).cron_trigger(name)
    click.echo(f"schedule {name!r} triggered: run {handle.id}")
