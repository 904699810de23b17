"""The pages: each reads what it shows and returns a template name and its context."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import islice
from typing import Any

from ..app import PgQueue
from ..cron import list_op as cron_list_op
from ..cron import ticks_after
from ..errors import ConfigurationError, PgQueueError
from ..messages import get_state_op
from ..status import FINAL, NAMES, UNSUCCESSFUL
from ..streams import StreamState, stream_state_op
from ..usage import GROUPINGS, run_usage_op, usage_op
from . import charts
from .auth import Auth
from .queries import RunFilters, limits_op, list_runs_op, overview_op, run_page_op, workers_op

Page = tuple[int, str, dict[str, Any]]
_RELATIVE = re.compile(r"^(\d+)\s*([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


class BadFilter(PgQueueError):
    """A filter value the runs list cannot use; the message says what is expected."""


@dataclass
class Dashboard:
    """What every request needs: the app (its pool), the auth rules, and the workflow graphs known
    from the code (`--app`), used to draw nodes that have not started yet."""

    app: PgQueue
    auth: Auth
    graphs: dict[str, dict[str, list[str]]] = field(default_factory=dict)


def parse_time(value: str, name: str, now: datetime) -> datetime:
    """An ISO time (UTC when it has no zone) or an age such as 15m, 2h, 7d."""
    value = value.strip()
    relative = _RELATIVE.match(value)
    if relative:
        try:
            return now - timedelta(**{_UNITS[relative[2]]: int(relative[1])})
        except OverflowError:
            raise BadFilter(f"{name}: {value!r} reaches back before the year 1") from None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise BadFilter(f"{name}: {value!r} is neither an ISO time (2026-11-26T09:00) "
                        "nor an age (15m, 2h, 7d)") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def parse_metadata(value: str) -> str:
    """`key=value` to a JSON object; the value is JSON when it parses (42, true, "42"), else a string."""
    key, sep, raw = value.partition("=")
    if not sep or not key.strip():
        raise BadFilter(f"metadata: {value!r} is not key=value (e.g. tenant=acme)")
    try:
        parsed: Any = json.loads(raw)
        # objects and arrays are matched as text; 1e999999 would decode to inf, which is no JSON
        if isinstance(parsed, (dict, list)) or (isinstance(parsed, float) and not math.isfinite(parsed)):
            parsed = raw
    except ValueError:
        parsed = raw
    return json.dumps({key.strip(): parsed})


def parse_filters(query: Mapping[str, str], now: datetime) -> tuple[RunFilters, int | None]:
    """The runs list's filters and page from the query string; BadFilter names a bad value."""
    def text(name: str) -> str | None:
        value = query.get(name, "").strip()
        if len(value) > 500:
            raise BadFilter(f"{name}: at most 500 characters")
        if "\x00" in value:  # PostgreSQL text cannot hold it
            raise BadFilter(f"{name}: a NUL character cannot be part of a filter")
        return value or None

    status = text("status")
    if status is not None and status not in NAMES:
        raise BadFilter(f"status: {status!r} is not one of {', '.join(NAMES)}")
    before = text("before")
    if before is not None and not (before.isascii() and before.isdigit() and int(before) < 2**63):
        raise BadFilter(f"before: {before!r} is not a run id")
    since, until = text("since"), text("until")
    metadata = text("metadata")
    filters = RunFilters(
        task=text("task"), status=status, queue=text("queue"), tag=text("tag"),
        metadata=parse_metadata(metadata) if metadata else None, concurrency_key=text("key"),
        since=parse_time(since, "since", now) if since else None,
        until=parse_time(until, "until", now) if until else None)
    return filters, int(before) if before else None


def overview(dash: Dashboard, query: Mapping[str, str]) -> Page:
    data = dash.app.db.execute(overview_op())
    usage = dash.app.db.execute(usage_op(since=datetime.now(UTC) - timedelta(days=1), limit=20))
    return 200, "overview.html", {
        "usage": usage,
        "data": data, "throughput": charts.throughput_chart(data.activity),
        "latency": charts.latency_chart(data.activity),
        "finished_hour": sum(int(a["succeeded"]) + int(a["failed"]) for a in data.activity),
        "failed_hour": sum(int(a["failed"]) for a in data.activity)}


def runs_list(dash: Dashboard, query: Mapping[str, str]) -> Page:
    now = datetime.now(UTC)
    context: dict[str, Any] = {"q": query, "statuses": NAMES, "runs": [], "more": False}
    try:
        filters, before = parse_filters(query, now)
    except BadFilter as exc:
        return 400, "runs.html", {**context, "error": str(exc)}
    runs, more = dash.app.db.execute(list_runs_op(filters, before), transaction=True)
    older = {k: v for k, v in query.items() if v and k != "before"}
    if more:
        older["before"] = str(runs[-1]["id"])
    return 200, "runs.html", {**context, "runs": runs, "more": more, "older": older, "paged": before is not None,
                              "newest": {k: v for k, v in query.items() if v and k != "before"}}


def run_detail(dash: Dashboard, run_id: int) -> Page:
    page = dash.app.db.execute(run_page_op(run_id))
    now = datetime.now(UTC)
    info = page.info
    graph = _workflow_graph(dash.graphs.get(info.task), page.nodes)
    states = {n["node"]: n["status"] for n in page.nodes}
    links = {n["node"]: n["id"] for n in page.nodes}
    done = sum(n for status, n in page.children_by_status.items() if status in FINAL)
    published = dash.app.db.execute(get_state_op(run_id))  # what ctx.set_state published last
    return 200, "run.html", {
        "published": published if published.updated_at is not None else None,
        "state_json": json.dumps(published.state, indent=2),
        "page": page, "info": info, "now": now, "stream": stream_state(dash, run_id),
        "usage": dash.app.db.execute(run_usage_op(run_id)),
        "timeline": charts.step_timeline(page.steps, now),
        "dag": charts.dag(graph, states, links) if graph else None,
        "children_done": done,
        "can_retry": info.status in UNSUCCESSFUL, "can_cancel": info.status not in FINAL,
        "can_send": info.status == "waiting" and bool(page.waits),
        "input_json": json.dumps(info.input, indent=2),
        "result_json": None if info.result is None else json.dumps(info.result, indent=2)}


def _workflow_graph(declared: dict[str, list[str]] | None, nodes: Sequence[Mapping[str, Any]]) -> dict[str, list[str]]:
    """The DAG of a workflow run: from the code when known (all nodes, started or not), else from
    the started nodes, whose inputs are keyed by their parents' names."""
    if declared:
        return declared
    names = {n["node"] for n in nodes}
    return {n["node"]: sorted(set(n["input_keys"] or ()) & (names - {n["node"]})) for n in nodes}


def workers(dash: Dashboard, query: Mapping[str, str]) -> Page:
    return 200, "workers.html", {"workers": dash.app.db.execute(workers_op())}


def cron(dash: Dashboard, query: Mapping[str, str]) -> Page:
    now = datetime.now(UTC)
    schedules = []
    for s in dash.app.db.execute(cron_list_op()):
        problem: str | None = None
        try:
            upcoming = list(islice(ticks_after(s.expression, s.timezone, s.next_fire_at or now), 3))
            if s.next_fire_at:
                upcoming = [s.next_fire_at, *upcoming[:2]]
        except ConfigurationError as exc:
            upcoming, problem = [], str(exc)
        schedules.append({"s": s, "upcoming": upcoming if s.enabled else [], "problem": problem})
    return 200, "cron.html", {"schedules": schedules}


def limits(dash: Dashboard, query: Mapping[str, str]) -> Page:
    concurrency, rates, paused = dash.app.db.execute(limits_op())
    return 200, "limits.html", {"concurrency": concurrency, "rates": rates, "paused": paused}


def usage(dash: Dashboard, query: Mapping[str, str]) -> Page:
    """Usage reported by runs: per task, key or run (`by`), of a task, since an age or a time."""
    by = query.get("by") or "task"
    task = (query.get("task") or "").strip()[:200] or None
    since = (query.get("since") or "24h").strip()
    context: dict[str, Any] = {"q": {"by": by, "task": task or "", "since": since}, "groupings": GROUPINGS,
                               "rows": []}
    try:
        if by not in GROUPINGS:
            raise BadFilter(f"by: {by!r} is not one of {', '.join(GROUPINGS)}")
        rows = dash.app.db.execute(usage_op(task=task, since=parse_time(since, "since", datetime.now(UTC)), by=by,
                                            limit=500))
    except BadFilter as exc:
        return 400, "usage.html", {**context, "error": str(exc)}
    return 200, "usage.html", {**context, "rows": rows}


PAGES = {"/": overview, "/runs": runs_list, "/workers": workers, "/cron": cron, "/limits": limits, "/usage": usage}


def stream_state(dash: Dashboard, run_id: int) -> StreamState:
    """The run's stream length and progress (RunNotFound for an unknown run)."""
    return dash.app.db.execute(stream_state_op(run_id))
