"""`pgqueue retention` (policies, changed at runtime and never overwritten by code) and `pgqueue prune`."""

from __future__ import annotations

import dataclasses
import time

import click

from pgqueue import PgQueue
from pgqueue.retention import (
    KINDS,
    LastPrune,
    Policy,
    PruneCounts,
    format_age,
    last_prune_op,
    parse_age,
    policies_op,
    prune_op,
    set_op,
    unset_op,
)

from .common import dsn_option, friendly_errors, json_option, print_json, table


@click.group("retention")
def retention_group() -> None:
    """How long finished runs are kept, per final status and per task."""


def retention_lines(policies: list[Policy], last: LastPrune) -> list[str]:
    """The retention part of `pgqueue status` and `pgqueue retention show`."""
    defaults = {p.status: p for p in policies if p.task == "*"}
    line = ", ".join(f"{s} {format_age(defaults[s].seconds)}" for s in KINDS if s in defaults)
    lines = [f"retention: {line}"]
    tasks: dict[str, list[str]] = {}
    for p in policies:
        if p.task != "*":
            tasks.setdefault(p.task, []).append(f"{p.status} {format_age(p.seconds)}")
    lines += [f"  task {task}: {', '.join(ages)}" for task, ages in tasks.items()]
    return [*lines, last_prune_line(last)]


def last_prune_line(last: LastPrune) -> str:
    if last.last_pruned_at is None:
        return "last prune: nothing pruned yet" + (
            f" (last pass {last.last_called_at:%Y-%m-%d %H:%M:%S})" if last.last_called_at else "")
    return (f"last prune: {last.last_pruned_at:%Y-%m-%d %H:%M:%S} removed {last.last_runs} run(s) in "
            f"{last.last_trees} tree(s) and {last.last_events} event(s); all time: {last.total_runs} run(s), "
            f"{last.total_events} event(s)")


@retention_group.command("show")
@json_option
@dsn_option
@friendly_errors
def show_cmd(as_json: bool, dsn: str | None) -> None:
    """The policies as stored (who set them) and the last prune."""
    with PgQueue(dsn) as app:
        policies = app.db.execute(policies_op())
        last = app.db.execute(last_prune_op())
    if as_json:
        print_json({"policies": [dataclasses.asdict(p) for p in policies], "last_prune": dataclasses.asdict(last)})
        return
    table(["task", "status", "keep", "set by"],
          [(p.task, p.status, format_age(p.seconds), p.source) for p in policies])
    click.echo()
    click.echo(last_prune_line(last))


@retention_group.command("set")
@click.argument("age")
@click.option("--status", type=click.Choice(KINDS), default=None,
              help="One final status (or 'events'); default: all four final statuses.")
@click.option("--task", default=None, help="A task's own policy; default: every task's.")
@dsn_option
@friendly_errors
def set_cmd(age: str, status: str | None, task: str | None, dsn: str | None) -> None:
    """Keep finished runs for AGE (90s, 30m, 12h, 7d, 2w) before pruning them."""
    seconds = parse_age(age)
    with PgQueue(dsn) as app:
        count = app.db.execute(set_op(seconds, status, task))
    click.echo(f"set {count} polic{'y' if count == 1 else 'ies'}: {task or 'every task'}, "
               f"{status or 'succeeded, failed, cancelled, dead'} kept {format_age(seconds)}")


@retention_group.command("unset")
@click.option("--task", required=True, help="The task whose own policy to remove.")
@click.option("--status", type=click.Choice(KINDS[:4]), default=None, help="Only this status.")
@dsn_option
@friendly_errors
def unset_cmd(task: str, status: str | None, dsn: str | None) -> None:
    """Remove a task's own policy: its runs follow the defaults again."""
    with PgQueue(dsn) as app:
        count = app.db.execute(unset_op(task, status))
    click.echo(f"removed {count} polic{'y' if count == 1 else 'ies'} of task {task}")


@click.command("prune")
@click.option("--dry-run", is_flag=True, help="Count what is due now; remove nothing.")
@click.option("--batch-size", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Runs per batch; each batch is its own short transaction.")
@click.option("--max-batches", type=click.IntRange(min=1), default=None, help="Stop after this many batches.")
@json_option
@dsn_option
@friendly_errors
def prune_cmd(dry_run: bool, batch_size: int, max_batches: int | None, as_json: bool, dsn: str | None) -> None:
    """Delete finished run trees past their retention, and old events no run waits for, now."""
    started = time.monotonic()
    with PgQueue(dsn) as app:
        if dry_run:
            total = app.db.execute(prune_op(batch_size, dry_run=True))
            batches = 0
        else:
            total, batches = PruneCounts(), 0
            while max_batches is None or batches < max_batches:
                counts = app.db.execute(prune_op(batch_size))
                total, batches = total + counts, batches + 1
                if counts.runs == 0 and counts.events == 0:
                    break
    if as_json:
        print_json({"dry_run": dry_run, "batches": batches, **dataclasses.asdict(total)})
    elif dry_run:
        click.echo(f"would prune {total.describe()}")
    else:
        click.echo(f"pruned {total.describe()} in {batches} batch(es), {time.monotonic() - started:.1f}s")
