"""`pgqueue runs ...`, `event` and `queue`: look at runs, act on runs and queues."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta

import click

from pgqueue import PgQueue
from pgqueue.runs import StepInfo, list_runs_op, run_detail_op
from pgqueue.status import NAMES
from pgqueue.streams import stream_state_op
from pgqueue.usage import run_usage_op

from .common import cell, dsn_option, friendly_errors, json_option, parse_when, print_json, status_text, table
from .tail_cmd import progress_text
from .usage_cmd import show_run_usage


@click.group("runs")
def runs_group() -> None:
    """List, inspect, retry and cancel runs."""


@runs_group.command("list")
@click.option("--task", default=None, help="Only runs of this task.")
@click.option("--status", type=click.Choice(NAMES), default=None, help="Only runs in this status.")
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
    with PgQueue(dsn) as app:
        runs = app.db.execute(list_runs_op(task=task, status=status, queue=queue, before=before, limit=limit,
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
    with PgQueue(dsn) as app:
        info, attempts, steps = app.db.execute(run_detail_op(run_id))
        stream = app.db.execute(stream_state_op(run_id))
        usage = app.db.execute(run_usage_op(run_id))
    if as_json:
        print_json({**dataclasses.asdict(info), "attempts": [dataclasses.asdict(a) for a in attempts],
                    "steps": [dataclasses.asdict(s) for s in steps], "stream_chunks": stream.chunks,
                    "progress": dataclasses.asdict(stream.progress) if stream.progress else None,
                    "usage": [dataclasses.asdict(u) for u in usage]})
        return
    click.echo(click.style(f"run {info.id}", bold=True) + f"  {info.task}  " + status_text(info.status))
    fields: list[tuple[str, object]] = [
        ("queue", f"{info.queue}  (priority {info.priority})"),
        ("created", info.created_at), ("run at", info.run_at), ("started", info.started_at),
        ("finished", info.finished_at),
        ("attempts", f"{info.attempt}  (recoveries {info.recoveries})"),
    ]
    if info.tags:
        fields.append(("tags", ", ".join(info.tags)))
    if info.idempotency_key:
        fields.append(("key", info.idempotency_key))
    if info.parent_id is not None:
        fields.append(("parent", f"run {info.parent_id}"))
    if info.children_total:
        fields.append(("children", f"{info.children_total - info.children_pending}/{info.children_total} done"))
    if stream.progress is not None:
        fields.append(("progress", progress_text(stream.progress)))
    if stream.chunks:
        fields.append(("stream", f"{stream.chunks} chunk(s)  (pgqueue runs tail {info.id})"))
    fields.append(("input", json.dumps(info.input)))
    if info.result is not None:
        fields.append(("result", json.dumps(info.result)))
    if info.error:
        fields.append(("error", f"{info.error.get('type')}: {info.error.get('message')}"))
    for label, value in fields:
        # styled after cell(), which escapes the control characters a stored value may hold
        click.echo(f"  {label:<9} {click.style(cell(value), fg='red') if label == 'error' else cell(value)}")
    if steps:
        click.echo()
        table(["step", "status", "tries", "took", "started", "output or error"],
              [(s.step_key, s.status, s.attempts, _took(s.started_at, s.finished_at), s.started_at,
                _step_outcome(s)) for s in steps])
    show_run_usage(usage)
    if not attempts:
        return
    click.echo()
    table(["attempt", "outcome", "took", "started", "worker", "error"],
          [(a.attempt, a.outcome, _took(a.started_at, a.finished_at), a.started_at,
            a.worker_name or a.worker_id or "-",
            f"{a.error_type}: {a.error_message}" if a.error_type else None) for a in attempts])
    for a in attempts:
        for what, text in (("traceback", a.traceback), ("logs", a.logs)):
            if text:
                click.echo(f"\nattempt {a.attempt} {what}:\n    " + text.rstrip().replace("\n", "\n    "))


def _step_outcome(step: StepInfo, width: int = 60) -> str:
    if step.error:
        return f"{step.error.get('type')}: {step.error.get('message')}"[:width]
    text = json.dumps(step.output)
    return text if len(text) <= width else text[:width - 3] + "..."


def _took(started: datetime, finished: datetime | None) -> str:
    return f"{(finished - started).total_seconds():.3f}s" if finished else "running"


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
