"""The worker suite's core, driven through whatever topology a test set up: plain runs, durable
steps around a sleep, a concurrency limit, a rate limit, events and a cron schedule — all with
`topology_app` workers already running. Every check reads what the tasks recorded."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

import psycopg

from pgqueue import PgQueue, RunStatus
from pgqueue.handles import RunHandle
from processes import wait_until


def rows(dsn: str, query: str, params: Any = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True, prepare_threshold=None) as conn:
        return conn.execute(query, params).fetchall()  # type: ignore[arg-type]


def most_at_once(spans: list[tuple[datetime, datetime]]) -> int:
    """The largest number of spans running at one instant."""
    edges = sorted([(s, 1) for s, _ in spans] + [(f, -1) for _, f in spans], key=lambda e: (e[0], e[1]))
    running = peak = 0
    for _, step in edges:
        running += step
        peak = max(peak, running)
    return peak


def exercise_core(app_module: Any, check_dsn: str, events: PgQueue) -> None:
    """Enqueue through `app_module.app` (bound to the topology's DSN), send events through
    `events`, wait for every outcome with handles (LISTEN where the app listens), and check the
    records on `check_dsn`."""
    tasks = app_module
    doubles = tasks.double.enqueue_many([{"n": i} for i in range(40)])
    stepped = tasks.stepped.enqueue_many([{"n": i} for i in range(5)])
    limited = tasks.limited.enqueue_many([{"tenant": f"t{i % 3}"} for i in range(12)])
    metered = tasks.metered.enqueue_many([{"n": i} for i in range(15)])
    waiters = [tasks.waiter.enqueue(key=f"k{i}") for i in range(3)]

    wait_until(lambda: all(h.status() == RunStatus.WAITING for h in waiters), what="waiters waiting")
    for i, handle in enumerate(waiters):
        assert events.send_event("topo.go", f"k{i}", {"i": i}) == 1, handle

    def results(handles: list[RunHandle[Any]]) -> list[Any]:
        return [h.result(timeout=120) for h in handles]

    assert results(doubles) == [2 * i for i in range(40)]
    assert results(stepped) == [(i + 1) * 10 for i in range(5)]
    assert results(limited) == [f"t{i % 3}" for i in range(12)]
    assert results(metered) == list(range(15))
    assert results(waiters) == [{"i": i} for i in range(3)]

    # each step's side effect happened once per run
    for handle in stepped:
        whats = sorted(r[0] for r in rows(check_dsn, "SELECT what FROM topo_log WHERE run_id = %s", (handle.id,)))
        assert whats == ["first", "second"], (handle.id, whats)
    # at most 2 at once per tenant
    for t in range(3):
        spans = rows(check_dsn, "SELECT started_at, finished_at FROM topo_log WHERE what = %s", (f"limited t{t}",))
        assert len(spans) == 4
        assert most_at_once([(s, f) for s, f in spans]) <= 2
    # 10 per second with a burst of 5: 15 starts take at least (15 - 5) / 10 = 1 s
    (first, last), = rows(check_dsn, "SELECT min(started_at), max(started_at) FROM topo_log WHERE what = 'metered'")
    assert (last - first).total_seconds() >= 0.9
    # the cron schedule fires every second on one of the workers, each tick once
    deadline = time.monotonic() + 30
    while len(rows(check_dsn, "SELECT 1 FROM topo_log WHERE what = 'tick'")) < 2:
        assert time.monotonic() < deadline, "the cron schedule did not fire twice in 30 s"
        time.sleep(0.2)
    twice = rows(check_dsn, "SELECT run_id FROM topo_log WHERE what = 'tick' GROUP BY run_id HAVING count(*) > 1")
    assert twice == []
