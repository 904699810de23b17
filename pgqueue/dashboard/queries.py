"""The dashboard's reads: operations over the named queries of sql/queries/dashboard.sql."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from ..ops import Op, Statement, statement
from ..queues import QueueStatus, status_op
from ..retention import LastPrune, Policy, last_prune_op, policies_op
from ..runs import AttemptInfo, RunInfo, run_detail_op

PAGE_SIZE = 50


def _q(name: str, params: Any = None, row: Any = dict) -> Statement:
    # custom plans: the plan of a filtered list depends on which filters are set
    return statement(f"dashboard.{name}", params, row=row, custom_plan=True)


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
    yield statement("dashboard.serial_plans")
    params = {**filters.__dict__, "before": before, "limit": limit + 1}
    runs = yield _q("list_runs", params)
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
    info, attempts, steps = yield from run_detail_op(run_id)
    p = {"run": run_id, "limit": children_limit}
    [extras] = yield _q("run_extras", p)
    page = RunPage(info, attempts, extras, [asdict(s) for s in steps], (yield _q("run_waits", p)))
    if info.children_total:
        page.children_by_status = dict((yield _q("children_by_status", p, row=None)))
        page.children = yield _q("children", p)
        page.nodes = yield _q("workflow_nodes", p)
    return page


def waits_op(run_id: int) -> Op[set[tuple[str, str]]]:
    """The (event name, key) pairs a run is waiting for."""
    return {(wait["event_name"], wait["event_key"]) for wait in (yield _q("run_waits", {"run": run_id}))}


@dataclass
class Overview:
    queues: list[QueueStatus]
    activity: list[dict[str, Any]]
    workers_alive: int
    now: datetime
    retention: list[Policy]
    last_prune: LastPrune


def overview_op() -> Op[Overview]:
    queues, workers = yield from status_op()
    activity = yield _q("activity")
    [(now,)] = yield _q("now", row=None)
    policies = yield from policies_op()
    last = yield from last_prune_op()
    return Overview(queues, activity, len(workers), now, policies, last)


def workers_op() -> Op[list[dict[str, Any]]]:
    workers: list[dict[str, Any]] = yield _q("workers")
    return workers


def limits_op() -> Op[tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]]:
    concurrency = yield statement("flow.concurrency_status", {"limit": 500}, row=dict)
    rates = yield statement("flow.rate_status", {"limit": 500}, row=dict)
    paused = yield _q("paused_queues")
    return concurrency, rates, paused
