"""`pgqueue status` and `pgqueue top`: queues and workers, once or as a live view."""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import click
import psycopg

from pgqueue import PgQueue
from pgqueue.config import describe_dsn
from pgqueue.flow import KeyUsage, RateUsage, flow_status_op
from pgqueue.queues import QueueStatus, WorkerStatus, status_op
from pgqueue.retention import LastPrune, Policy, last_prune_op, policies_op

from .common import dsn_option, friendly_errors, json_option, print_json, render_table
from .limits_cmd import usage_lines
from .retention_cmd import retention_lines

interval_option = click.option("--interval", "-n", type=click.FloatRange(min=0.1), default=2.0, show_default=True,
                               help="Seconds between refreshes of the live view.")
# stop after N refreshes: for tests and scripts, not a user-facing feature
iterations_option = click.option("--iterations", type=click.IntRange(min=1), default=None, hidden=True)


@dataclass(frozen=True)
class Status:
    queues: list[QueueStatus]
    workers: list[WorkerStatus]
    keys: list[KeyUsage]
    rates: list[RateUsage]
    policies: list[Policy]
    last_prune: LastPrune


def fetch_status(app: PgQueue) -> Status:
    return Status(*app.db.execute(status_op()), *app.db.execute(flow_status_op()),
                  app.db.execute(policies_op()), app.db.execute(last_prune_op()))


def _snapshot(status: Status) -> dict[str, Any]:
    return {"queues": [dataclasses.asdict(q) for q in status.queues],
            "workers": [dataclasses.asdict(w) for w in status.workers],
            "concurrency_keys": [dataclasses.asdict(k) for k in status.keys],
            "rate_limits": [dataclasses.asdict(r) for r in status.rates],
            "retention": [dataclasses.asdict(p) for p in status.policies],
            "last_prune": dataclasses.asdict(status.last_prune)}


def render_status(status: Status) -> list[str]:
    lines = render_table(
        ["queue", "queued", "scheduled", "running", "failed 1h", "oldest wait s", "state"],
        [(q.queue, q.queued, q.scheduled, q.running, q.failed_last_hour, q.oldest_wait_s,
          "paused" if q.paused else "active") for q in status.queues])
    if not status.queues:
        lines.append("(no queued, running or recently failed runs)")
    lines.append("")
    if status.workers:
        lines += render_table(
            ["worker", "host", "pid", "queues", "concurrency", "running", "heartbeat age s", "labels", "version"],
            [(w.name, w.host, w.pid, ",".join(w.queues), w.concurrency, w.running, w.heartbeat_age_s,
              ",".join(w.labels) or "-", w.version or "-")
             for w in status.workers])
    else:
        lines.append("no worker alive")
    if status.keys or status.rates:
        lines += ["", *usage_lines(status.keys, status.rates)]
    lines += ["", *retention_lines(status.policies, status.last_prune)]
    return lines


def watch(app: PgQueue, interval: float, iterations: int | None, as_json: bool) -> None:
    """Redraw until Ctrl-C (or `iterations` refreshes). With --json, one JSON object per line per
    refresh instead, for piping into other tools."""
    title = f"pgqueue status  {describe_dsn(app.dsn)}  every {interval:g}s  (Ctrl-C to quit)"
    shown = 0
    try:
        while True:
            try:
                status = fetch_status(app)
                lines, snapshot = render_status(status), _snapshot(status)
            except psycopg.OperationalError as exc:  # keep watching: the database may come back
                lines, snapshot = [click.style(f"database unavailable: {exc}".strip(), fg="red")], {"error": str(exc)}
            if as_json:
                click.echo(json.dumps({"at": datetime.now().astimezone().isoformat(), **snapshot}, default=str))
            else:
                click.clear()  # a no-op when stdout is not a terminal
                click.echo("\n".join([click.style(title, bold=True), f"{datetime.now():%Y-%m-%d %H:%M:%S}", "",
                                      *lines]))
            shown += 1
            if iterations is not None and shown >= iterations:
                return
            time.sleep(interval)
    except KeyboardInterrupt:
        click.echo()  # leave the prompt on a line of its own; Ctrl-C is the normal way out


@click.command("status")
@click.option("--watch", "-w", "live", is_flag=True, help="Refresh in place until Ctrl-C (like `pgqueue top`).")
@interval_option
@iterations_option
@json_option
@dsn_option
@friendly_errors
def status_cmd(live: bool, interval: float, iterations: int | None, as_json: bool, dsn: str | None) -> None:
    """Per queue: queued, scheduled, running, failed in the last hour, oldest wait; workers alive;
    the busiest concurrency keys and rate-limit buckets; the retention policy and the last prune."""
    with PgQueue(dsn) as app:
        if live:
            watch(app, interval, iterations, as_json)
            return
        status = fetch_status(app)
    if as_json:
        print_json(_snapshot(status))
    else:
        click.echo("\n".join(render_status(status)))


@click.command("top")
@interval_option
@iterations_option
@json_option
@dsn_option
@friendly_errors
def top_cmd(interval: float, iterations: int | None, as_json: bool, dsn: str | None) -> None:
    """Live view of queues and workers: `pgqueue status --watch`."""
    with PgQueue(dsn) as app:
        watch(app, interval, iterations, as_json)
