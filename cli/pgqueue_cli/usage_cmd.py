"""`pgqueue usage`: what runs reported they used (tokens, cost, ...), per task, key or run."""

from __future__ import annotations

import dataclasses
import re
from datetime import UTC, datetime, timedelta

import click

from pgqueue import PgQueue
from pgqueue.usage import GROUPINGS, RunUsage, usage_op

from .common import dsn_option, friendly_errors, json_option, parse_when, print_json, table

_AGE = re.compile(r"^(\d{1,6})([smhd])$")
_AGE_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_since(value: str | None) -> datetime | None:
    """An age (15m, 2h, 7d) or an ISO date-time with a time zone."""
    if value is None:
        return None
    age = _AGE.match(value.strip())
    if age:
        return datetime.now(UTC) - timedelta(**{_AGE_UNITS[age[2]]: int(age[1])})
    return parse_when(value)


def amount_text(amount: float) -> str:
    return f"{amount:,.0f}" if amount == int(amount) else f"{amount:,.6g}"


@click.command("usage")
@click.option("--task", default=None, help="Only runs of this task.")
@click.option("--since", default=None, help="Reported since: an age (15m, 2h, 7d) or an ISO time with a zone.")
@click.option("--by", type=click.Choice(GROUPINGS), default="task", show_default=True,
              help="Per task, per task and concurrency key, or per run.")
@click.option("--limit", type=click.IntRange(1, 10_000), default=100, show_default=True)
@json_option
@dsn_option
@friendly_errors
def usage_cmd(task: str | None, since: str | None, by: str, limit: int, as_json: bool, dsn: str | None) -> None:
    """Usage reported by runs (ctx.report_usage): per unit, the biggest first."""
    with PgQueue(dsn) as app:
        rows = app.db.execute(usage_op(task=task, since=parse_since(since), by=by, limit=limit))
    if as_json:
        print_json([dataclasses.asdict(r) for r in rows])
        return
    if not rows:
        click.echo("no usage reported" + (f" by task {task!r}" if task else "") + (f" since {since}" if since else ""))
        return
    headers = ["task", *([{"key": "key", "run": "run"}[by]] if by != "task" else []), "unit", "amount", "runs",
               "reports", "last reported"]
    table(headers, [(r.task, *([r.group] if by != "task" else []), r.unit, amount_text(r.amount), r.runs, r.reports,
                     r.last_at) for r in rows])


def show_run_usage(usage: list[RunUsage]) -> None:
    """The usage part of `pgqueue runs show`."""
    if not usage:
        return
    click.echo()
    table(["usage by", "unit", "amount", "reports"],
          [(u.step_key or "(run)", u.unit, amount_text(u.amount), u.reports) for u in usage])
