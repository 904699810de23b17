"""Flow control with real `pgqueue worker` processes: limits checked afterwards, by SQL, from
the start and end times the tasks recorded."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from conftest import bind
from processes import FAST, Workers, sql, wait_until

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]

# The most runs of one tenant that overlapped in time: +1 at each start, -1 at each end.
MAX_OVERLAP = """
WITH edges AS (
    SELECT tenant, started_at AS at, 1 AS delta FROM spans
    UNION ALL
    SELECT tenant, finished_at, -1 FROM spans
), running AS (
    SELECT tenant, sum(delta) OVER (PARTITION BY tenant ORDER BY at, delta ROWS UNBOUNDED PRECEDING) AS n
      FROM edges
)
SELECT coalesce(max(n), 0) FROM running
"""


@pytest.fixture
def flow_tasks(dsn: str) -> Iterator[Any]:
    import flow_app

    bind(flow_app.app, dsn)
    sql(dsn, flow_app.SPANS_DDL)
    sql(dsn, "TRUNCATE spans")
    yield flow_app
    bind(flow_app.app, None)


@pytest.fixture
def workers(dsn: str, flow_tasks: Any, tmp_path: Path) -> Iterator[Workers]:
    group = Workers(dsn, tmp_path, app="flow_app:app")
    yield group
    group.stop_all()


def all_done(dsn: str, ids: list[int]) -> bool:
    return sql(dsn, "SELECT count(*) FROM pgqueue.runs WHERE id = ANY(%s) AND status <> 'succeeded'", (ids,))[0][0] == 0


def test_fifty_tenants_limited_to_three_on_four_workers(flow_tasks: Any, workers: Workers, dsn: str) -> None:
    handles = flow_tasks.embed.enqueue_many([{"tenant": f"tenant-{i % 50}", "seconds": 0.03} for i in range(2000)])
    ids = [h.id for h in handles]
    for _ in range(4):
        workers.start("--concurrency", "20", *FAST)
    wait_until(lambda: all_done(dsn, ids), timeout=240, what="2,000 runs")
    assert sql(dsn, "SELECT count(*), count(DISTINCT run_id) FROM spans") == [(2000, 2000)]
    assert 2 <= sql(dsn, MAX_OVERLAP)[0][0] <= 3  # tenants did run in parallel, never beyond the limit
    assert sql(dsn, "SELECT count(DISTINCT pid) FROM spans")[0][0] >= 2
    # fewer tenants than free slots: every tenant is held at exactly its limit
    sql(dsn, "TRUNCATE spans")
    ids = [h.id for h in flow_tasks.embed.enqueue_many([{"tenant": f"few-{i % 5}", "seconds": 0.05}
                                                        for i in range(200)])]
    wait_until(lambda: all_done(dsn, ids), timeout=120, what="200 runs of 5 tenants")
    assert sql(dsn, MAX_OVERLAP)[0][0] == 3


def test_slots_of_a_killed_worker_come_back_when_its_lease_expires(flow_tasks: Any, workers: Workers,
                                                                   dsn: str) -> None:
    handles = flow_tasks.embed.enqueue_many([{"tenant": "solo", "seconds": 30}] * 3
                                            + [{"tenant": "solo", "seconds": 0.05}] * 3)
    ids = [h.id for h in handles]
    doomed = workers.start("--concurrency", "10", *FAST)
    wait_until(lambda: sql(dsn, "SELECT count(*) FROM pgqueue.runs WHERE status = 'running'")[0][0] == 3,
               what="3 slots taken")
    os.kill(doomed.pid, signal.SIGKILL)
    doomed.wait()
    killed_at = sql(dsn, "SELECT now()")[0][0]
    sql(dsn, "UPDATE pgqueue.runs SET input = jsonb_set(input, '{seconds}', '0.05') WHERE id = ANY(%s)", (ids,))
    workers.start("--concurrency", "10", *FAST)
    wait_until(lambda: all_done(dsn, ids), timeout=60, what="the runs after the kill")
    # nothing of the tenant started again before the killed worker's lease ran out (2 s)
    first_restart = sql(dsn, "SELECT min(started_at) FROM spans")[0][0]
    assert (first_restart - killed_at).total_seconds() >= 1.0
    assert sql(dsn, MAX_OVERLAP)[0][0] <= 3
    assert sql(dsn, "SELECT count(*) FROM pgqueue.attempts WHERE run_id = ANY(%s) AND outcome = 'crashed'",
               (ids,))[0][0] == 3


def test_rate_limit_of_twenty_per_second_across_four_workers(flow_tasks: Any, workers: Workers, dsn: str) -> None:
    """300 runs at 20/s (burst 20) take ~14 s; in any window of T seconds at most 20 + 20 T start.
    A 429 at the 150th run holds the key: no worker starts a run for the next 2 seconds."""
    first = flow_tasks.call_provider.enqueue_many([{"n": i} for i in range(150)])
    busy = flow_tasks.call_provider.enqueue(n=150, busy=True)
    rest = flow_tasks.call_provider.enqueue_many([{"n": i} for i in range(151, 300)])
    ids = [h.id for h in [*first, busy, *rest]]
    for _ in range(4):
        workers.start("--concurrency", "20", *FAST)
    wait_until(lambda: all_done(dsn, ids), timeout=120, what="300 rate-limited runs")
    starts = [row[0] for row in sql(dsn, "SELECT extract(epoch FROM started_at)::float8 FROM spans"
                                         " WHERE note IS NULL ORDER BY started_at")]
    assert len(starts) == 300
    for window in (1.0, 3.0, 10.0):
        busiest = max(sum(1 for t in starts[i:] if t < s + window) for i, s in enumerate(starts))
        assert busiest <= 20 + 20 * window + 1, f"{busiest} runs started within {window} s"
    assert starts[-1] - starts[0] >= (300 - 20) / 20 - 0.5
    held_at = sql(dsn, "SELECT extract(epoch FROM started_at)::float8 FROM spans WHERE note = '429'")[0][0]
    during_hold = [t for t in starts if held_at + 0.2 < t < held_at + 1.9]
    assert during_hold == []
    assert sql(dsn, "SELECT failures, attempt FROM pgqueue.runs WHERE id = %s", (busy.id,)) == [(0, 2)]


def test_paused_queue_keeps_limited_runs_queued(flow_tasks: Any, workers: Workers, dsn: str) -> None:
    flow_tasks.app.pause_queue("default")
    handles = flow_tasks.embed.enqueue_many([{"tenant": "p", "seconds": 0.01}] * 5)
    ids = [h.id for h in handles]
    workers.start("--concurrency", "5", *FAST)
    wait_until(lambda: sql(dsn, "SELECT count(*) FROM pgqueue.workers WHERE stopped_at IS NULL")[0][0] >= 1,
               what="the worker")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_sleep(1)")
    assert sql(dsn, "SELECT count(*) FROM pgqueue.runs WHERE id = ANY(%s) AND status = 'queued'", (ids,))[0][0] == 5
    flow_tasks.app.resume_queue("default")
    wait_until(lambda: all_done(dsn, ids), timeout=30, what="the resumed queue")
