"""Real `pgqueue worker` processes, and breaking things around them.

Each test checks invariants afterwards from the database: every run finished, and no run's
side effect (a row the task writes in `executions`) happened twice.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from conftest import ROOT, bind
from pgqueue.embedded import EmbeddedServer, find_pg_bin
from pgqueue.migrations import migrate
from processes import FAST, Workers, sql, wait_until

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]

@pytest.fixture
def workers(dsn: str, worker_tasks: Any, tmp_path: Path) -> Iterator[Workers]:
    group = Workers(dsn, tmp_path)
    yield group
    group.stop_all()


def statuses(dsn: str, ids: list[int]) -> dict[str, int]:
    return dict(sql(dsn, "SELECT status, count(*) FROM pgqueue.runs WHERE id = ANY(%s) GROUP BY status", (ids,)))


def executions_per_run(dsn: str, ids: list[int]) -> dict[int, int]:
    rows = sql(dsn, "SELECT run_id, count(*) FROM executions WHERE run_id = ANY(%s) GROUP BY run_id", (ids,))
    return dict(rows)


@pytest.mark.parametrize("concurrency", ["10", "20"])
def test_ten_thousand_runs_through_four_workers_each_exactly_once(worker_tasks: Any, workers: Workers,
                                                                 dsn: str, concurrency: str) -> None:
    ids = [h.id for h in worker_tasks.record.enqueue_many([{"n": i} for i in range(10_000)])]
    procs = [workers.start("--concurrency", concurrency, "--burst", *FAST) for _ in range(4)]
    for proc in procs:
        assert proc.wait(timeout=240) == 0
    assert statuses(dsn, ids) == {"succeeded": 10_000}
    counts = executions_per_run(dsn, ids)
    assert len(counts) == 10_000 and set(counts.values()) == {1}
    per_worker = sql(dsn, "SELECT pid, count(*) FROM executions GROUP BY pid")
    assert len(per_worker) >= 2, per_worker  # the work was shared
    # one attempt each: runs claimed ahead and given back were not counted as attempts
    assert sql(dsn, "SELECT max(attempt), count(*) FROM pgqueue.attempts WHERE run_id = ANY(%s)",
               (ids,)) == [(1, 10_000)]


def test_sigkilled_worker_runs_are_finished_by_another(worker_tasks: Any, workers: Workers, dsn: str) -> None:
    quick = [h.id for h in worker_tasks.record.enqueue_many([{"n": i} for i in range(5)])]
    naps = [h.id for h in worker_tasks.nap.enqueue_many([{"seconds": 3}] * 5)]
    victim = workers.start("--concurrency", "10", *FAST)
    wait_until(lambda: statuses(dsn, quick) == {"succeeded": 5} and statuses(dsn, naps) == {"running": 5},
               what="quick runs done and naps running")
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    workers.start("--concurrency", "10", *FAST)
    wait_until(lambda: statuses(dsn, naps) == {"succeeded": 5}, what="naps rescued and finished")
    assert set(executions_per_run(dsn, quick + naps).values()) == {1}
    rows = sql(dsn, "SELECT recoveries, failures FROM pgqueue.runs WHERE id = ANY(%s)", (naps,))
    assert set(rows) == {(1, 0)}
    outcomes = sql(dsn, "SELECT array_agg(outcome ORDER BY attempt) FROM pgqueue.attempts"
                        " WHERE run_id = ANY(%s) GROUP BY run_id", (naps,))
    assert {tuple(o[0]) for o in outcomes} == {("crashed", "succeeded")}


def test_terminated_connections_are_reopened_and_nothing_is_lost(worker_tasks: Any, workers: Workers,
                                                                 dsn: str) -> None:
    naps = [h.id for h in worker_tasks.nap.enqueue_many([{"seconds": 1.5}] * 6)]
    workers.start("--concurrency", "10", *FAST)
    wait_until(lambda: statuses(dsn, naps) == {"running": 6}, what="naps running")
    killed = sql(dsn, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                      " WHERE datname = current_database() AND pid <> pg_backend_pid()")
    assert len(killed) >= 3  # claim/heartbeat, listener, the tasks' own connection
    later = [h.id for h in worker_tasks.record.enqueue_many([{"n": i} for i in range(20)])]
    wait_until(lambda: statuses(dsn, naps + later) == {"succeeded": 26}, what="all runs to finish")
    assert set(executions_per_run(dsn, naps + later).values()) == {1}
    assert "lost the notification connection" in workers.log_of(0) or "failed" in workers.log_of(0)


def test_postgres_restart_mid_run(worker_tasks: Any, tmp_path: Path) -> None:
    server = EmbeddedServer(tmp_path / "own-server", find_pg_bin())
    server.ensure_running()
    try:
        dsn = server.dsn
        migrate(dsn)
        bind(worker_tasks.app, dsn)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(worker_tasks.EXECUTIONS_DDL)
        naps = [h.id for h in worker_tasks.nap.enqueue_many([{"seconds": 2}] * 4)]
        group = Workers(dsn, tmp_path)
        try:
            group.start("--concurrency", "10", "--lease", "15", "--heartbeat", "0.5", "--poll-interval", "0.1")
            wait_until(lambda: statuses(dsn, naps) == {"running": 4}, what="naps running")
            server.restart()
            later = [h.id for h in worker_tasks.record.enqueue_many([{"n": i} for i in range(10)])]
            wait_until(lambda: statuses(dsn, naps + later) == {"succeeded": 14}, timeout=90,
                       what="all runs to finish after the restart")
            assert set(executions_per_run(dsn, naps + later).values()) == {1}
            assert group.procs[0].poll() is None  # the worker survived
        finally:
            group.stop_all()
    finally:
        worker_tasks.app.close()
        server.destroy()


def test_sigterm_hands_back_after_the_grace_period_and_exits_zero(worker_tasks: Any, workers: Workers,
                                                                  dsn: str) -> None:
    short = worker_tasks.nap.enqueue(0.5).id
    long = worker_tasks.nap.enqueue(60).id
    proc = workers.start("--grace-period", "2", *FAST)
    wait_until(lambda: statuses(dsn, [short, long]) == {"running": 2}, what="both running")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    assert sql(dsn, "SELECT id, status FROM pgqueue.runs WHERE id = ANY(%s) ORDER BY id", ([short, long],)) == [
        (short, "succeeded"), (long, "queued")]
    assert "handing 1 unfinished run(s) back" in workers.log_of(0)
    again = workers.start(*FAST)
    wait_until(lambda: statuses(dsn, [long]) == {"running": 1}, what="handed-back run picked up again")
    again.send_signal(signal.SIGTERM)
    wait_until(lambda: "press Ctrl-C again" in workers.log_of(1), what="the first signal's message")
    again.send_signal(signal.SIGTERM)  # second signal: exit at once
    assert again.wait(timeout=10) != 0
    # on the way out it handed its run back and marked itself stopped: nothing waits for a lease
    assert statuses(dsn, [long]) == {"queued": 1}
    assert sql(dsn, "SELECT stopped_at IS NOT NULL FROM pgqueue.workers WHERE pid = %s", (again.pid,)) == [(True,)]
    assert "forced exit: handed 1 running run(s) back" in workers.log_of(1)


def test_a_run_that_keeps_killing_its_worker_ends_dead(worker_tasks: Any, workers: Workers, dsn: str) -> None:
    run_id = worker_tasks.crash_worker.enqueue().id
    for _ in range(8):
        proc = workers.start("--lease", "1", "--heartbeat", "0.3", "--poll-interval", "0.1", "--max-recoveries", "2")
        deadline = time.monotonic() + 20
        while proc.poll() is None and time.monotonic() < deadline and statuses(dsn, [run_id]) != {"dead": 1}:
            time.sleep(0.1)
        if statuses(dsn, [run_id]) == {"dead": 1}:
            break
    assert sql(dsn, "SELECT status, recoveries, error->>'type' FROM pgqueue.runs WHERE id = %s", (run_id,)) == [
        ("dead", 3, "CrashLoop")]


@pytest.mark.parametrize(("target", "message"), [
    ("no_such_module:app", "module 'no_such_module' not found"),
    ("worker_app:nothing", "has no attribute 'nothing'"),
    ("worker_app:record", "not a PgQueue app"),
    ("worker_app", "is not MODULE:ATTR"),
])
def test_bad_app_path(dsn: str, target: str, message: str) -> None:
    env = {**os.environ, "PGQUEUE_DSN": dsn, "PYTHONPATH": str(ROOT / "tests")}
    result = subprocess.run([sys.executable, "-m", "pgqueue_cli", "worker", target], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and message in result.stderr and "Traceback" not in result.stderr


def test_worker_refuses_an_unmigrated_database(empty_dsn: str) -> None:
    env = {**os.environ, "PGQUEUE_DSN": empty_dsn, "PYTHONPATH": str(ROOT / "tests")}
    result = subprocess.run([sys.executable, "-m", "pgqueue_cli", "worker", "worker_app:app"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "run `pgqueue migrate`" in result.stderr


@pytest.fixture
def durable_workers(dsn: str, durable_tasks: Any, tmp_path: Path) -> Iterator[Workers]:
    group = Workers(dsn, tmp_path, app="durable_app:app")
    yield group
    group.stop_all()


def test_pipeline_survives_sigkill_during_the_llm_step(durable_tasks: Any, durable_workers: Workers,
                                                       dsn: str) -> None:
    run_id = durable_tasks.pipeline.enqueue(durable_tasks.Document(text="one. two. three", llm_seconds=3)).id
    victim = durable_workers.start(*FAST)
    wait_until(lambda: bool(sql(dsn, "SELECT 1 FROM effects WHERE run_id = %s AND what = 'llm'", (run_id,))),
               what="the LLM step to start")
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    durable_workers.start(*FAST)
    wait_until(lambda: statuses(dsn, [run_id]) == {"succeeded": 1}, what="the pipeline to finish")
    assert dict(sql(dsn, "SELECT what, count(*) FROM effects WHERE run_id = %s GROUP BY what", (run_id,))) == {
        "parse": 1, "chunk": 1, "llm": 2, "store": 1}
    assert sql(dsn, "SELECT count(*) FROM stored WHERE run_id = %s", (run_id,)) == [(1,)]


def test_fan_out_of_ten_thousand_children_across_a_worker_restart(durable_tasks: Any, durable_workers: Workers,
                                                                   dsn: str) -> None:
    parent = durable_tasks.fan_out.enqueue(10_000, 1000).id
    first = durable_workers.start("--concurrency", "50", *FAST)
    wait_until(lambda: sql(dsn, "SELECT count(*) FROM pgqueue.runs WHERE parent_id = %s AND status = 'succeeded'",
                           (parent,))[0][0] >= 2000, what="a part of the children to finish")
    first.send_signal(signal.SIGTERM)  # a deploy: the parent's worker restarts mid fan-out
    assert first.wait(timeout=60) == 0
    durable_workers.start("--concurrency", "50", *FAST)
    wait_until(lambda: statuses(dsn, [parent]) == {"succeeded": 1}, timeout=240, what="the parent to finish")
    assert sql(dsn, "SELECT result FROM pgqueue.runs WHERE id = %s", (parent,)) == [(2 * sum(range(10_000)),)]
    children = sql(dsn, "SELECT count(*), count(*) FILTER (WHERE status = 'succeeded') FROM pgqueue.runs"
                        " WHERE parent_id = %s", (parent,))
    assert children == [(10_000, 10_000)]
    # every child ran to completion exactly once (a hand-back on shutdown is not a completion)
    assert sql(dsn, "SELECT count(*) FROM pgqueue.attempts a JOIN pgqueue.runs r ON r.id = a.run_id"
                    " WHERE r.parent_id = %s AND a.outcome IN ('succeeded', 'crashed', 'failed')",
               (parent,)) == [(10_000,)]
    assert sql(dsn, "SELECT count(*) FROM effects WHERE run_id = %s AND what = 'total'", (parent,)) == [(1,)]


def test_three_workers_fire_each_cron_tick_exactly_once_across_kills(dsn: str, tmp_path: Path) -> None:
    group = Workers(dsn, tmp_path, app="cron_app:app")
    try:
        procs = [group.start(*FAST) for _ in range(3)]
        wait_until(lambda: len(sql(dsn, "SELECT 1 FROM pgqueue.cron_ticks WHERE schedule = 'every-second'")) >= 3,
                   what="the first ticks")
        for victim in procs[:2]:  # kill and replace two of the three, one after the other
            time.sleep(2)
            victim.send_signal(signal.SIGKILL)
            victim.wait()
            group.start(*FAST)
        time.sleep(3)
    finally:
        group.stop_all()
    ticks = [r[0] for r in sql(dsn, "SELECT tick_at FROM pgqueue.cron_ticks WHERE schedule = 'every-second'"
                                    " ORDER BY tick_at")]
    assert len(ticks) >= 8
    gaps = {(b - a).total_seconds() for a, b in itertools.pairwise(ticks)}
    assert gaps == {1.0}, gaps  # no tick missed
    runs = sql(dsn, "SELECT count(*), count(DISTINCT idempotency_key), count(DISTINCT t.tick_at)"
                    " FROM pgqueue.cron_ticks t JOIN pgqueue.runs r ON r.id = t.run_id"
                    " WHERE t.schedule = 'every-second'")
    assert runs == [(len(ticks), len(ticks), len(ticks))]  # one run per tick
