"""`pgqueue runs ...` and `pgqueue status`: look at runs and queues, and act on runs."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta

import click

from pgqueue import PgQueue
from pgqueue.admin import RUN_STATUSES, list_runs_op, run_detail_op, status_op
from pgqueue.flow import flow_status_op

from .common import cell, dsn_option, friendly_errors, json_option, parse_when, print_json, table
from .limits_cmd import show_usage


@click.group("runs")
def runs_group() -> None:
    """List, inspect, retry and cancel runs."""


@runs_group.command("list")
@click.option("--task", default=None, help="Only runs of this task.")
@click.option("--status", type=click.Choice(RUN_STATUSES), default=None, help="Only runs in this status.")
@click.option("--queue", default=None, help="Only runs of this queue.")
@click.option("--before", type=int, default=None, help="Page: only ids below this one.")
@click.option("--scheduled", is_flag=True, help="Only queued runs whose time has not come yet.")
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
@json_option
@dsn_option
@friendly_errors
def list_cmd(task: str | None, status: str | None, queue: str | None, before: int | None, scheduled: bool,
             limit: int, as_json: bool, dsn: str | None) -> None:
    """Newest runs first."""
    runs = PgQueue(dsn).execute(list_runs_op(task=task, status=status, queue=queue, before=before, limit=limit,
                                             scheduled=scheduled))
    if as_json:
        print_json([dataclasses.asdict(r) for r in runs])
        return
    table(["id", "task", "queue", "status", "attempt", "created", "finished", "error"],
           [(r.id, r.task, r.queue, r.status, r.attempt, r.created_at, r.finished_at, r.error_type) for r in runs])


@runs_group.command("show")
@click.argument("run_id", type=int)
@json_option
@dsn_option
@friendly_errors
def show_cmd(run_id: int, as_json: bool, dsn: str | None) -> None:
    """A run with its input, result or error, and every attempt."""
    info, attempts = PgQueue(dsn).execute(run_detail_op(run_id))
    if as_json:
        print_json({**dataclasses.asdict(info), "attempts": [dataclasses.asdict(a) for a in attempts]})
        return
    click.echo(f"run {info.id}  task {info.task}  queue {info.queue}  status {info.status}")
    click.echo(f"  created {cell(info.created_at)}  run at {cell(info.run_at)}  started {cell(info.started_at)}"
               f"  finished {cell(info.finished_at)}")
    click.echo(f"  attempts {info.attempt}  recoveries {info.recoveries}  priority {info.priority}"
               + (f"  tags {','.join(info.tags)}" if info.tags else ""))
    if info.parent_id is not None:
        click.echo(f"  parent run {info.parent_id}")
    if info.children_total:
        done = info.children_total - info.children_pending
        click.echo(f"  children {done}/{info.children_total} done")
    click.echo(f"  input  {json.dumps(info.input)}")
    if info.result is not None:
        click.echo(f"  result {json.dumps(info.result)}")
    if info.error:
        click.echo(f"  error  {info.error.get('type')}: {info.error.get('message')}")
    for a in attempts:
        took = f"{(a.finished_at - a.started_at).total_seconds():.3f}s" if a.finished_at else "running"
        click.echo(f"  attempt {a.attempt}: {a.outcome} after {took} on worker {a.worker_id or '-'}"
                   + (f" - {a.error_type}: {a.error_message}" if a.error_type else ""))
        if a.traceback:
            click.echo("    " + a.traceback.rstrip().replace("\n", "\n    "))
        if a.logs:
            click.echo("    logs:\n      " + a.logs.rstrip().replace("\n", "\n      "))


@runs_group.command("retry")
@click.argument("run_id", type=int)
@dsn_option
@friendly_errors
def retry_cmd(run_id: int, dsn: str | None) -> None:
    """Queue a failed, cancelled or dead run again (completed steps are kept)."""
    PgQueue(dsn).retry(run_id)
    click.echo(f"run {run_id} queued again")


@runs_group.command("replay")
@click.argument("run_id", type=int)
@click.option("--from-start", is_flag=True, help="Discard the completed steps and run from the start.")
@dsn_option
@friendly_errors
def replay_cmd(run_id: int, from_start: bool, dsn: str | None) -> None:
    """Run a failed or cancelled run again, from its failed step (or --from-start)."""
    PgQueue(dsn).replay(run_id, from_start=from_start)
    click.echo(f"run {run_id} queued again " + ("from the start" if from_start else "from its failed step"))


@runs_group.command("reschedule")
@click.argument("run_id", type=int)
@click.option("--at", "at", default=None, help="ISO time with zone, e.g. 2026-12-01T09:00:00+00:00.")
@click.option("--delay", type=float, default=None, help="Seconds from now.")
@dsn_option
@friendly_errors
def reschedule_cmd(run_id: int, at: str | None, delay: float | None, dsn: str | None) -> None:
    """Move a queued run to another time (--at or --delay)."""
    if (at is None) == (delay is None):
        raise click.UsageError("give exactly one of --at and --delay")
    when = datetime.now(UTC) + timedelta(seconds=delay) if delay is not None else parse_when(at)
    assert when is not None
    PgQueue(dsn).reschedule(run_id, when)
    click.echo(f"run {run_id} rescheduled to {when.isoformat()}")


@runs_group.command("cancel")
@click.argument("run_id", type=int)
@dsn_option
@friendly_errors
def cancel_cmd(run_id: int, dsn: str | None) -> None:
    """Cancel a run (a running one is asked to stop)."""
    outcome = PgQueue(dsn).cancel(run_id)
    messages = {"cancelled": f"run {run_id} cancelled",
                "cancel_requested": f"run {run_id} is running: its worker was asked to stop it"}
    click.echo(messages.get(outcome, f"run {run_id} had already finished ({outcome}); nothing to cancel"))


@click.group("event")
def event_group() -> None:
    """Send events (approvals, signals) to waiting runs and subscribed tasks."""


@event_group.command("send")
@click.argument("name")
@click.option("--key", default="", help="Event key, e.g. approval:run-42.")
@click.option("--payload", default="{}", help="JSON payload.")
@dsn_option
@friendly_errors
def event_send_cmd(name: str, key: str, payload: str, dsn: str | None) -> None:
    """Send event NAME; runs waiting for it wake up with the payload."""
    try:
        value = json.loads(payload)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"--payload is not valid JSON ({exc.msg})") from None
    woken = PgQueue(dsn).send_event(name, key, value)
    click.echo(f"event {name!r} key {key!r} sent; {woken} waiting run(s) woken")


@click.group("queue")
def queue_group() -> None:
    """Pause and resume queues."""


@queue_group.command("pause")
@click.argument("name")
@dsn_option
@friendly_errors
def queue_pause_cmd(name: str, dsn: str | None) -> None:
    """Stop claiming NAME's runs; they stay queued."""
    PgQueue(dsn).pause_queue(name)
    click.echo(f"queue {name!r} paused")


@queue_group.command("resume")
@click.argument("name")
@dsn_option
@friendly_errors
def queue_resume_cmd(name: str, dsn: str | None) -> None:
    """Claim NAME's runs again."""
    PgQueue(dsn).resume_queue(name)
    click.echo(f"queue {name!r} resumed")


@click.command("status")
@json_option
@dsn_option
@friendly_errors
def status_cmd(as_json: bool, dsn: str | None) -> None:
    """Per queue: queued, scheduled, running, failed in the last hour, oldest wait; workers alive."""
    app = PgQueue(dsn)
    queues, workers = app.execute(status_op())
    keys, rates = app.execute(flow_status_op())
    if as_json:
        print_json({"queues": [dataclasses.asdict(q) for q in queues],
                     "workers": [dataclasses.asdict(w) for w in workers],
                     "concurrency_keys": [dataclasses.asdict(k) for k in keys],
                     "rate_limits": [dataclasses.asdict(r) for r in rates]})
        return
    table(["queue", "queued", "scheduled", "running", "failed 1h", "oldest wait s", "state"],
          [(q.queue, q.queued, q.scheduled, q.running, q.failed_last_hour, q.oldest_wait_s,
            "paused" if q.paused else "active") for q in queues])
    click.echo()
    table(["worker", "host", "pid", "queues", "concurrency", "running", "heartbeat age s"],
           [(w.name, w.host, w.pid, ",".join(w.queues), w.concurrency, w.running, w.heartbeat_age_s)
            for w in workers])
    if keys or rates:
        click.echo()
        show_usage(keys, rates)
