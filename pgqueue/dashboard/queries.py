"""The dashboard's reads: operations over the named queries of sql/queries/dashboard.sql."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .._ops import Op, Statement
from .._sql import query
from ..admin import AttemptInfo, QueueStatus, run_detail_op, status_op
from ..runs import RunInfo

FINAL = frozenset({"succeeded", "failed", "cancelled", "dead"})
RETRYABLE = frozenset({"failed", "cancelled", "dead"})
PAGE_SIZE = 50


def _q(name: str, params: Any = None) -> Statement:
    # custom plans: the plan of a filtered list depends on which filters are set
    return Statement(query("dashboard", name), params, custom_plan=True)


def _dicts(rows: list[tuple[Any, ...]], names: str) -> list[dict[str, Any]]:
    keys = names.split()
    return [dict(zip(keys, row, strict=True)) for row in rows]


@dataclass(frozen=True)
class RunFilters:
    """The runs list's filters, already validated (see pages.parse_filters)."""

    task: str | None = None
    status: str | None = None
    queue: str | None = None
    tag: str | None = None
    metadata: str | None = None        # a JSON object text, e.g. {"tenant": "acme"}
    concurrency_key: str | None = None
    since: datetime | None = None
    until: datetime | None = None


def list_runs_op(filters: RunFilters, before: int | None,
                 limit: int = PAGE_SIZE) -> Op[tuple[list[dict[str, Any]], bool]]:
    """A page of runs, newest first, and whether an older page exists (run it in a transaction)."""
    yield Statement(query("dashboard", "serial_plans"))
    params = {**filters.__dict__, "before": before, "limit": limit + 1}
    rows = yield _q("list_runs", params)
    runs = _dicts(rows, "id task queue status attempt created_at started_at finished_at error_type tags "
                        "concurrency_key")
    return runs[:limit], len(runs) > limit


@dataclass
class RunPage:
    info: RunInfo
    attempts: list[AttemptInfo]
    extras: dict[str, Any]
    steps: list[dict[str, Any]]
    waits: list[dict[str, Any]]
    children_by_status: dict[str, int] = field(default_factory=dict)
    children: list[dict[str, Any]] = field(default_factory=list)
    nodes: list[dict[str, Any]] = field(default_factory=list)


def run_page_op(run_id: int, children_limit: int = 100) -> Op[RunPage]:
    """Everything the run page shows (raises RunNotFound for an unknown id)."""
    info, attempts = yield from run_detail_op(run_id)
    p = {"run": run_id, "limit": children_limit}
    [extras] = _dicts((yield _q("run_extras", p)), "concurrency_key workflow_node cancel_requested worker_id root_id")
    steps = _dicts((yield _q("run_steps", p)), "step_key name status attempts started_at finished_at error output")
    waits = _dicts((yield _q("run_waits", p)), "event_name event_key since timeout_at")
    page = RunPage(info, attempts, extras, steps, waits)
    if info.children_total:
        page.children_by_status = {status: int(n) for status, n in (yield _q("children_by_status", p))}
        page.children = _dicts((yield _q("children", p)), "id task status workflow_node created_at finished_at")
        page.nodes = _dicts((yield _q("workflow_nodes", p)), "node id status input_keys started_at finished_at")
    return page


def waits_op(run_id: int) -> Op[set[tuple[str, str]]]:
    """The (event name, key) pairs a run is waiting for."""
    return {(name, key) for name, key, _, _ in (yield _q("run_waits", {"run": run_id}))}


@dataclass
class Overview:
    queues: list[QueueStatus]
    activity: list[dict[str, Any]]
    workers_alive: int
    now: datetime


def overview_op() -> Op[Overview]:
    queues, workers = yield from status_op()
    activity = _dicts((yield _q("activity")), "minute succeeded failed p50_s p95_s")
    [(now,)] = yield _q("now")
    return Overview(queues, activity, len(workers), now)


def workers_op() -> Op[list[dict[str, Any]]]:
    rows = yield _q("workers")
    return _dicts(rows, "name host pid queues concurrency heartbeat_age_s state running started_at")


def limits_op() -> Op[tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]]:
    keys = yield Statement(query("flow", "concurrency_status"), {"limit": 500})
    concurrency = _dicts(keys, "name key running max_running strategy queued")
    rates = _dicts((yield Statement(query("flow", "rate_status"), {"limit": 500})),
                   "name key available capacity per_second held_until next_start")
    paused = _dicts((yield _q("paused_queues")), "name updated_at")
    return concurrency, rates, paused
