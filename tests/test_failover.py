"""Failover: a primary with a synchronous streaming standby; in the middle of a drain the primary
crashes (immediate stop) and the standby is promoted. Producers and two worker processes, given a
multi-host DSN (`host=a,b target_session_attrs=read-write`), find the new primary on their own
and carry on; nothing acknowledged before the crash is lost, checked run by run. As
non-superusers (the producer and worker roles)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import topology_app
from psycopg.conninfo import make_conninfo
from topology import StreamingPair, least_privilege_database

from pgqueue import PgQueue
from pgqueue.embedded import find_pg_bin
from processes import FAST, Workers, wait_until

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StreamingPair]:
    servers = StreamingPair(tmp_path_factory.mktemp("failover"), find_pg_bin())
    try:
        servers.start()
        yield servers
    finally:
        servers.destroy()


def query(dsn: str, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
        return conn.execute(sql, params).fetchall()  # type: ignore[arg-type]


class Producer(threading.Thread):
    """Enqueues 5 `stepped` runs at a time until stopped; keeps the ids of every enqueue that
    returned (acknowledged), with the time it returned, and counts the ones that raised."""

    def __init__(self, dsn: str) -> None:
        super().__init__(daemon=True)
        self.dsn = dsn
        self.acked: list[tuple[int, float]] = []
        self.errors: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        n = 0
        with PgQueue(self.dsn) as producer:
            while not self.stop.is_set():
                try:
                    handles = producer.enqueue_many("stepped", [{"n": n + i} for i in range(5)])
                except Exception as exc:
                    self.errors.append(f"{type(exc).__name__}: {exc}")
                    time.sleep(0.2)
                    continue
                self.acked.extend((h.id, time.monotonic()) for h in handles)
                n += 5
                time.sleep(0.05)


def test_failover_to_a_synchronous_standby_mid_drain(pair: StreamingPair, tmp_path: Path) -> None:
    dsns = least_privilege_database(pair.primary.dsn, lambda name: make_conninfo(pair.primary.dsn, dbname=name),
                                    "failover")
    with psycopg.connect(dsns["admin"], autocommit=True) as conn:
        conn.execute(topology_app.LOG_DDL)
        conn.execute("GRANT SELECT, INSERT ON topo_log TO pgqueue_worker")
    either = pair.multi_host_dsn(dsns["admin"])
    standby_admin = make_conninfo(dsns["admin"], port=pair.standby.port)
    workers = Workers(pair.multi_host_dsn(dsns["worker"]), tmp_path, app="topology_app:app")
    producer = Producer(pair.multi_host_dsn(dsns["producer"]))
    try:
        for _ in range(2):
            workers.start(*FAST, "--concurrency", "8")
        wait_until(lambda: bool(query(either, "SELECT 1 FROM pgqueue.tasks WHERE name = 'stepped'")),
                   what="workers registered")
        producer.start()
        wait_until(lambda: query(either, "SELECT count(*) FROM pgqueue.runs WHERE task = 'stepped'"
                                         " AND status = 'succeeded'")[0][0] >= 40, what="40 runs done")

        # what the primary has committed (with synchronous replication: also on the standby)
        done_before = dict(query(dsns["admin"], "SELECT id, result FROM pgqueue.runs WHERE status = 'succeeded'"
                                             " AND task = 'stepped'"))
        steps_before = set(query(dsns["admin"], "SELECT run_id, step_key, output::text FROM pgqueue.steps"
                                                " WHERE status = 'succeeded'"))
        acked_before = [run for run, _ in producer.acked]

        pair.crash_primary()
        time.sleep(1.0)  # the workers and the producer meet a dead primary
        pair.promote_standby()
        promoted_at = time.monotonic()
        wait_until(lambda: any(at > promoted_at for _, at in producer.acked), timeout=60,
                   what="an enqueue acknowledged by the new primary")
        time.sleep(2.0)
        producer.stop.set()
        producer.join(60)
        acked = [run for run, _ in producer.acked]
        first_after = min(at for _, at in producer.acked if at > promoted_at)

        def all_final() -> bool:
            left = query(standby_admin, "SELECT count(*) FROM pgqueue.runs WHERE id = ANY(%s)"
                                        " AND status NOT IN ('succeeded', 'failed', 'dead', 'cancelled')", (acked,))
            return int(left[0][0]) == 0

        wait_until(all_final, timeout=180, what="every acknowledged run finished on the new primary")
        assert all(proc.poll() is None for proc in workers.procs), "a worker exited during the failover"
    finally:
        producer.stop.set()
        workers.stop_all()

    after = {run: (status, result) for run, status, result in
             query(standby_admin, "SELECT id, status, result FROM pgqueue.runs WHERE task = 'stepped'")}
    inputs = dict(query(standby_admin, "SELECT id, (input->>'n')::int FROM pgqueue.runs WHERE task = 'stepped'"))
    # every acknowledged enqueue is there and succeeded with its own result
    for run in acked:
        assert run in after, f"run {run} was acknowledged but is missing after the failover"
        assert after[run] == ("succeeded", (inputs[run] + 1) * 10), (run, after[run])
    assert set(acked_before) <= set(acked)
    # every completion committed before the crash kept its result
    for run, result in done_before.items():
        assert after.get(run, (None, None))[1] == result, run
    # every checkpointed step is still there, with its output
    steps_after = set(query(standby_admin, "SELECT run_id, step_key, output::text FROM pgqueue.steps"
                                           " WHERE status = 'succeeded'"))
    assert steps_before <= steps_after, sorted(steps_before - steps_after)[:5]
    # runs finished before the crash did not run again
    for run, whats in query(standby_admin, "SELECT run_id, array_agg(what ORDER BY what) FROM topo_log"
                                           " WHERE run_id = ANY(%s) GROUP BY run_id", (list(done_before),)):
        assert whats == ["first", "second"], (run, whats)
    print(f"\nfailover: {len(acked)} runs acknowledged ({len(acked_before)} before the crash), "
          f"{len(done_before)} done before it, {len(producer.errors)} enqueue tries refused meanwhile; "
          f"first enqueue on the new primary {first_after - promoted_at:.2f} s after the promotion")
