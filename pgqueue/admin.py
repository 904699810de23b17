"""Inspecting and acting on runs: listing, details with attempts, cancel, retry, queue status."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ._ops import Op, Statement
from ._sql import query
from .runs import RunInfo, get_run_op

RUN_STATUSES = ("queued", "running", "sleeping", "waiting", "succeeded", "failed", "cancelled", "dead")


@dataclass(frozen=True)
class RunSummary:
    id: int
    task: str
    queue: str
    status: str
    priority: int
    attempt: int
    failures: int
    recoveries: int
    created_at: datetime
    run_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    error_type: str | None


@dataclass(frozen=True)
class AttemptInfo:
    attempt: int
    worker_id: str | None
    started_at: datetime
    finished_at: datetime | None
    outcome: str
    error_type: str | None
    error_message: str | None
    traceback: str | None
    logs: str | None


@dataclass(frozen=True)
class QueueStatus:
    queue: str
    queued: int
    scheduled: int
    running: int
    failed_last_hour: int
    oldest_wait_s: float | None
    paused: bool = False


@dataclass(frozen=True)
class WorkerStatus:
    name: str
    host: str
    pid: int
    queues: list[str]
    concurrency: int
    heartbeat_age_s: float
    running: int


def _q(name: str, params: Any = None) -> Statement:
    return Statement(query("admin", name), params)


def list_runs_op(*, task: str | None = None, status: str | None = None, queue: str | None = None,
                 before: int | None = None, limit: int = 50, scheduled: bool = False) -> Op[list[RunSummary]]:
    """Newest first; page with `before=<smallest id of the previous page>` (index-friendly).
    `scheduled`: only queued runs whose time has not come yet."""
    rows = yield _q("list_runs", {"task": task, "status": status, "queue": queue, "before": before,
                                  "limit": limit, "scheduled": scheduled})
    return [RunSummary(*row) for row in rows]


def run_detail_op(run_id: int) -> Op[tuple[RunInfo, list[AttemptInfo]]]:
    info = yield from get_run_op(run_id)
    rows = yield _q("run_attempts", (run_id,))
    return info, [AttemptInfo(*row) for row in rows]


def cancel_op(run_id: int) -> Op[str]:
    return str((yield _q("cancel_run", (run_id,)))[0][0])


def set_queue_paused_op(queue: str, paused: bool) -> Op[None]:
    yield _q("pause_queue" if paused else "resume_queue", (queue,))


def reschedule_op(run_id: int, run_at: datetime) -> Op[str]:
    return str((yield _q("reschedule_run", (run_id, run_at)))[0][0])


def replay_op(run_id: int, from_start: bool = False) -> Op[str]:
    return str((yield _q("replay_run", (run_id, from_start)))[0][0])


def status_op() -> Op[tuple[list[QueueStatus], list[WorkerStatus]]]:
    queues = [QueueStatus(q, int(a), int(b), int(c), int(d), None if e is None else float(e), bool(p))
              for q, a, b, c, d, e, p in (yield _q("queue_status"))]
    workers = [WorkerStatus(n, h, p, qs, c, float(age), int(r))
               for n, h, p, qs, c, age, r in (yield _q("workers_alive"))]
    return queues, workers
