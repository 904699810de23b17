"""Runs as stored: their state, attempts, listings, and the actions taken on them.

Reads map rows by column name onto the dataclasses here; actions (cancel, retry, replay,
reschedule) are the database functions of `sql/functions`, which check the run's state.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .errors import RunNotFound
from .ops import Op, statement
from .status import RunStatus


@dataclass(frozen=True)
class RunInfo:
    id: int
    task: str
    queue: str
    priority: int
    status: RunStatus
    input: dict[str, Any]
    result: Any
    error: dict[str, Any] | None
    run_at: datetime
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    attempt: int
    recoveries: int
    idempotency_key: str | None
    tags: list[str]
    metadata: dict[str, Any]
    parent_id: int | None = None
    children_total: int = 0
    children_pending: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", RunStatus(self.status))

    @property
    def done(self) -> bool:
        return self.status.final


@dataclass(frozen=True)
class RunSummary:
    """A run in a listing."""

    id: int
    task: str
    queue: str
    status: RunStatus
    priority: int
    attempt: int
    failures: int
    recoveries: int
    created_at: datetime
    run_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    error_type: str | None

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", RunStatus(self.status))


@dataclass(frozen=True)
class AttemptInfo:
    attempt: int
    worker_id: str | None
    #: the worker's name, as its log and `pgqueue status` show it (None once its row is gone)
    worker_name: str | None
    started_at: datetime
    finished_at: datetime | None
    outcome: str
    error_type: str | None
    error_message: str | None
    traceback: str | None
    logs: str | None


def get_run_op(run_id: int) -> Op[RunInfo]:
    rows = yield statement("runs.get_run", (run_id,), row=RunInfo)
    if not rows:
        pruned_up_to = (yield statement("runs.pruned_up_to"))[0][0]
        if pruned_up_to is not None and run_id <= pruned_up_to:
            raise RunNotFound(f"no run with id {run_id}: pruned by retention (finished runs are deleted once "
                              "older than their policy; see `pgqueue retention show`)")
        raise RunNotFound(f"no run with id {run_id} (it may have been pruned by retention)")
    run: RunInfo = rows[0]
    return run


def list_runs_op(*, task: str | None = None, status: str | None = None, queue: str | None = None,
                 before: int | None = None, limit: int = 50, scheduled: bool = False) -> Op[list[RunSummary]]:
    """Newest first; page with `before=<smallest id of the previous page>` (index-friendly).
    `scheduled`: only queued runs whose time has not come yet."""
    rows = yield statement("runs.list_runs", {"task": task, "status": status, "queue": queue, "before": before,
                                              "limit": limit, "scheduled": scheduled}, row=RunSummary)
    return rows


@dataclass(frozen=True)
class StepInfo:
    """A checkpointed step of a durable run (`ctx.step`, a sleep, a wait, a spawn)."""

    step_key: str
    name: str
    status: str
    attempts: int
    started_at: datetime
    finished_at: datetime | None
    error: dict[str, Any] | None
    output: Any


def run_detail_op(run_id: int) -> Op[tuple[RunInfo, list[AttemptInfo], list[StepInfo]]]:
    info = yield from get_run_op(run_id)
    attempts = yield statement("runs.run_attempts", (run_id,), row=AttemptInfo)
    steps = yield statement("runs.run_steps", (run_id,), row=StepInfo)
    return info, attempts, steps


def _answer(rows: list[Any]) -> str:
    return str(rows[0][0])


def cancel_op(run_id: int) -> Op[str]:
    """'cancelled' if it had not started, 'cancel_requested' if it is running."""
    return _answer((yield statement("runs.cancel_run", (run_id,))))


def reschedule_op(run_id: int, run_at: datetime) -> Op[str]:
    return _answer((yield statement("runs.reschedule_run", (run_id, run_at))))


def replay_op(run_id: int, from_start: bool = False) -> Op[str]:
    return _answer((yield statement("runs.replay_run", (run_id, from_start))))
