"""`pgqueue limits`: concurrency and rate limits at runtime (changes are never overwritten by code)."""

from __future__ import annotations

import dataclasses

import click

from pgqueue import PgQueue
from pgqueue.flow import STRATEGIES, KeyUsage, RateUsage, flow_status_op, list_limits_op

from .common import dsn_option, friendly_errors, json_option, print_json, render_table, table


@click.group("limits")
def limits_group() -> None:
    """Concurrency limits per key and rate limits: see and change them while workers run."""


@limits_group.command("list")
@json_option
@dsn_option
@friendly_errors
def list_cmd(as_json: bool, dsn: str | None) -> None:
    """Limits as stored, then current use: busiest keys and every rate-limit bucket."""
    app = PgQueue(dsn)
    limits = app.db.execute(list_limits_op())
    keys, rates = app.db.execute(flow_status_op())
    if as_json:
        print_json({"concurrency_limits": [dataclasses.asdict(row) for row in limits],
                    "keys": [dataclasses.asdict(k) for k in keys],
                    "rate_limits": [dataclasses.asdict(r) for r in rates]})
        return
    table(["task", "key", "max running", "strategy", "set by"],
          [(row.task, row.key, row.max_running, row.strategy, row.source) for row in limits])
    click.echo()
    show_usage(keys, rates)


def show_usage(keys: list[KeyUsage], rates: list[RateUsage]) -> None:
    for line in usage_lines(keys, rates):
        click.echo(line)


def usage_lines(keys: list[KeyUsage], rates: list[RateUsage]) -> list[str]:
    """The flow-control part of `pgqueue status` (and its live view)."""
    lines: list[str] = []
    if keys:
        lines += render_table(["task", "concurrency key", "running/limit", "queued", "strategy"],
                              [(k.task, k.key, f"{k.running}/{k.max_running if k.max_running is not None else '-'}",
                                k.queued, k.strategy or "-") for k in keys])
    if rates:
        if keys:
            lines.append("")
        lines += render_table(["rate limit", "key", "available", "per second", "held until", "next start"],
                              [(r.name, r.key or "-", f"{r.available:.1f}/{r.capacity:g}", f"{r.per_second:g}",
                                r.held_until, r.next_start) for r in rates])
    return lines


@limits_group.command("set")
@click.argument("task")
@click.argument("max_running", type=click.IntRange(min=1))
@click.option("--key", default="*", show_default=True, help="One key (a tenant), or * for the task's default.")
@click.option("--strategy", type=click.Choice(STRATEGIES), help="What to do with runs over the limit.")
@dsn_option
@friendly_errors
def set_cmd(task: str, max_running: int, key: str, strategy: str | None, dsn: str | None) -> None:
    """At most MAX_RUNNING runs of TASK at once per key (or for one --key)."""
    PgQueue(dsn).set_concurrency_limit(task, max_running, key=key, strategy=strategy)
    click.echo(f"{task} [{key}]: at most {max_running} running")


@limits_group.command("unset")
@click.argument("task")
@click.option("--key", default="*", show_default=True)
@dsn_option
@friendly_errors
def unset_cmd(task: str, key: str, dsn: str | None) -> None:
    """Remove a key's own limit (the task's default applies again)."""
    if not PgQueue(dsn).delete_concurrency_limit(task, key=key):
        raise click.ClickException(f"no concurrency limit for task {task!r} and key {key!r}; see `pgqueue limits list`")
    click.echo(f"{task} [{key}]: limit removed")


@limits_group.command("rate")
@click.argument("name")
@click.argument("limit", type=click.FloatRange(min=0, min_open=True))
@click.option("--per", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True,
              help="Seconds the LIMIT units are for (60: per minute).")
@click.option("--burst", type=click.FloatRange(min=0, min_open=True), help="Largest burst (default LIMIT).")
@click.option("--key", default="", help="Only this key's bucket (a tenant on another plan).")
@dsn_option
@friendly_errors
def rate_cmd(name: str, limit: float, per: float, burst: float | None, key: str, dsn: str | None) -> None:
    """Set rate limit NAME to LIMIT units per --per seconds."""
    PgQueue(dsn).set_rate_limit(name, limit=limit, per=per, burst=burst, key=key)
    click.echo(f"rate limit {name}{f' [{key}]' if key else ''}: {limit:g} per {per:g}s")


@limits_group.command("hold")
@click.argument("name")
@click.argument("seconds", type=click.FloatRange(min=0))
@click.option("--key", default="")
@dsn_option
@friendly_errors
def hold_cmd(name: str, seconds: float, key: str, dsn: str | None) -> None:
    """No worker starts a run needing rate limit NAME for SECONDS (e.g. a provider outage)."""
    until = PgQueue(dsn).hold_rate_limit(name, seconds, key=key)
    click.echo(f"rate limit {name}{f' [{key}]' if key else ''} held until {until:%Y-%m-%d %H:%M:%S%z}")
