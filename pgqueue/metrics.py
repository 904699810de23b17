"""Prometheus metrics of a worker, served over HTTP without extra dependencies.

The worker counts what it does (runs started and finished by task, queue and outcome, claim latency,
run durations, heartbeats); queue depth, oldest wait and live workers are read from the
database when the endpoint is scraped (`gauges_op`, shared with the dashboard's `/metrics`). The
endpoint binds to loopback unless told otherwise, and any other address requires a bearer token.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from .errors import ConfigurationError
from .ops import Op, statement
from .queues import status_op
from .retention import last_prune_op
from .usage import totals_op as usage_totals_op

log = logging.getLogger("pgqueue.metrics")

Labels = tuple[tuple[str, str], ...]
BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0, 600.0)
HELP = {
    "pgqueue_runs_started_total": "Attempts started by this worker, by task and queue.",
    "pgqueue_runs_finished_total": "Attempts finished by this worker, by task, queue and outcome.",
    "pgqueue_claims_total": "Claim round trips of this worker.",
    "pgqueue_claim_seconds": "Duration of claim round trips.",
    "pgqueue_outcome_writes_total": "Round trips that recorded a batch of attempt outcomes.",
    "pgqueue_run_seconds": "Duration of attempts, by task.",
    "pgqueue_heartbeats_total": "Heartbeats written by this worker.",
    "pgqueue_queue_runs": "Runs per queue and state (from the database).",
    "pgqueue_queue_oldest_wait_seconds": "Age of the oldest due run per queue (from the database).",
    "pgqueue_workers_alive": "Workers with a fresh heartbeat (from the database).",
    "pgqueue_concurrency_waiting_runs": "Due runs waiting because their key is at its concurrency limit, by task.",
    "pgqueue_rate_limit_available_units": "Units available in a rate limit's shared bucket (from the database).",
    "pgqueue_rate_limit_held_keys": "Keys of a rate limit on hold after a 429 (from the database).",
    "pgqueue_rate_limit_deferred_runs": "Runs deferred for want of units or a hold, all time (from the database).",
    "pgqueue_pruned_runs_total": "Runs deleted by retention, all time (from the database).",
    "pgqueue_pruned_events_total": "Events deleted by retention, all time (from the database).",
    "pgqueue_usage_total": "Usage reported by runs (ctx.report_usage), all time, by task and unit (from the database).",
}
#: series read from the database that only grow: typed counter, not gauge
DATABASE_COUNTERS = frozenset({"pgqueue_usage_total"})


def _labels(**labels: str) -> Labels:
    return tuple(sorted(labels.items()))


def _fmt(name: str, labels: Labels, value: float) -> str:
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
    return f"{name}{{{inner}}} {value:g}" if inner else f"{name} {value:g}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Metrics:
    def __init__(self) -> None:
        self.counters: dict[str, dict[Labels, float]] = defaultdict(lambda: defaultdict(float))
        self.histograms: dict[str, dict[Labels, list[float]]] = defaultdict(dict)

    def inc(self, name: str, value: float = 1.0, **labels: str) -> None:
        self.counters[name][_labels(**labels)] += value

    def observe(self, name: str, seconds: float, **labels: str) -> None:
        # per label set: one count per bucket, then sum and count
        series = self.histograms[name].setdefault(_labels(**labels), [0.0] * (len(BUCKETS) + 2))
        for i, bound in enumerate(BUCKETS):
            if seconds <= bound:
                series[i] += 1
        series[-2] += seconds
        series[-1] += 1

    def render(self, gauges: dict[str, dict[Labels, float]]) -> str:
        lines: list[str] = []
        for kind, families in (("counter", self.counters), ("gauge", gauges)):
            for name, series in sorted(families.items()):
                shown = "counter" if name in DATABASE_COUNTERS else kind
                lines += [f"# HELP {name} {HELP.get(name, name)}", f"# TYPE {name} {shown}"]
                lines += [_fmt(name, labels, value) for labels, value in sorted(series.items())]
        for name, hist in sorted(self.histograms.items()):
            lines += [f"# HELP {name} {HELP.get(name, name)}", f"# TYPE {name} histogram"]
            for labels, values in sorted(hist.items()):
                for bound, count in zip(BUCKETS, values, strict=False):
                    lines.append(_fmt(f"{name}_bucket", (*labels, ("le", f"{bound:g}")), count))
                lines.append(_fmt(f"{name}_bucket", (*labels, ("le", "+Inf")), values[-1]))
                lines.append(_fmt(f"{name}_sum", labels, values[-2]))
                lines.append(_fmt(f"{name}_count", labels, values[-1]))
        return "\n".join(lines) + "\n"


def check_binding(host: str, token: str | None, what: str = "metrics",
                  option: str = "--metrics-token (or PGQUEUE_METRICS_TOKEN)") -> None:
    """Loopback needs nothing; any other address needs a token."""
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback and not token:
        raise ConfigurationError(
            f"refusing to serve {what} on {host} without a token: set {option}, or bind to 127.0.0.1")


def loopback_host(host_header: str | None) -> bool:
    """Whether a request's Host header names a loopback address (localhost, 127.0.0.0/8, ::1).
    A server that answers without a token must check it: a page on another site whose name an
    attacker re-pointed at 127.0.0.1 (DNS rebinding) sends its own name there."""
    try:
        name = urlsplit("//" + (host_header or "")).hostname or ""
    except ValueError:  # e.g. an unbalanced "[" in the header
        return False
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def bearer_ok(authorization: str | None, token: str) -> bool:
    """Whether an Authorization header carries the token (constant-time compare)."""
    return hmac.compare_digest((authorization or "").encode(), f"Bearer {token}".encode())


async def serve_metrics(host: str, port: int, token: str | None,
                render: Callable[[], Awaitable[str]]) -> asyncio.Server:
    """A minimal HTTP/1.1 server answering GET /metrics."""
    check_binding(host, token)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).decode("latin-1")
            request_line, *header_lines = head.split("\r\n")
            headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines if h)}
            method, path, *_ = request_line.split(" ")
            if token and not bearer_ok(headers.get("authorization"), token):
                status, body = "401 Unauthorized", "a bearer token is required\n"
            elif not token and not loopback_host(headers.get("host")):
                status, body = "403 Forbidden", "without a token, metrics answer only to a loopback Host name\n"
            elif method != "GET" or path.split("?")[0] != "/metrics":
                status, body = "404 Not Found", "see /metrics\n"
            else:
                status, body = "200 OK", await render()
            payload = body.encode()
            writer.write(f"HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\n"
                         f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode() + payload)
            await writer.drain()
        except asyncio.LimitOverrunError:
            # headers over the reader's 64 KiB limit: a client error, not the server's
            log.debug("metrics request dropped: headers too large")
            writer.write(b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\n"
                         b"Connection: close\r\n\r\n")
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError, ValueError) as exc:
            log.debug("metrics request dropped: %s", exc)
        except Exception:
            log.exception("metrics request failed")
        finally:
            writer.close()

    return await asyncio.start_server(handle, host, port)


def gauges_op() -> Op[dict[str, dict[Labels, float]]]:
    """The gauges read from the database at each scrape, for the worker's and the dashboard's endpoints."""
    queues, workers = yield from status_op()
    gauges = database_gauges(queues, workers)
    for task, waiting in (yield statement("flow.waiting_metrics")):
        gauges["pgqueue_concurrency_waiting_runs"][_labels(task=task)] = float(waiting)
    for name, available, held, deferred in (yield statement("flow.rate_metrics")):
        if available is not None:
            gauges["pgqueue_rate_limit_available_units"][_labels(limit=name)] = float(available)
        gauges["pgqueue_rate_limit_held_keys"][_labels(limit=name)] = float(held)
        gauges["pgqueue_rate_limit_deferred_runs"][_labels(limit=name)] = float(deferred)
    for task, unit, amount in (yield from usage_totals_op()):
        gauges["pgqueue_usage_total"][_labels(task=task, unit=unit)] = amount
    last = yield from last_prune_op()
    gauges["pgqueue_pruned_runs_total"][()] = float(last.total_runs)
    gauges["pgqueue_pruned_events_total"][()] = float(last.total_events)
    return gauges


def database_gauges(queues: list[Any], workers: list[Any]) -> dict[str, dict[Labels, float]]:
    gauges: dict[str, dict[Labels, float]] = defaultdict(dict)
    for q in queues:
        for state in ("queued", "scheduled", "running"):
            gauges["pgqueue_queue_runs"][_labels(queue=q.queue, state=state)] = float(getattr(q, state))
        gauges["pgqueue_queue_oldest_wait_seconds"][_labels(queue=q.queue)] = float(q.oldest_wait_s or 0.0)
    gauges["pgqueue_workers_alive"][()] = float(len(workers))
    return gauges
