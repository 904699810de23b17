"""`pgqueue tasks`: the tasks workers registered, with their queue and their flow and enqueue control."""

from __future__ import annotations

import dataclasses

import click

from pgqueue import PgQueue
from pgqueue.control import list_tasks_op

from .common import dsn_option, friendly_errors, json_option, print_json, table


@click.command("tasks")
@json_option
@dsn_option
@friendly_errors
def tasks_cmd(as_json: bool, dsn: str | None) -> None:
    """Registered tasks: queue, priority, concurrency key, rate limits, debounce / singleton / throttle."""
    rows = PgQueue(dsn).db.execute(list_tasks_op())
    if as_json:
        print_json([dataclasses.asdict(row) for row in rows])
        return
    table(["task", "queue", "priority", "concurrency key", "rate limited", "enqueue control"],
          [(r.name, r.queue, r.priority, r.concurrency_key_field or "-", "yes" if r.rate_limited else "-",
            r.control or "-") for r in rows])
