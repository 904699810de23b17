"""pgqueue through PgBouncer (transaction pooling) against direct connections: latency from
enqueue to start, drain throughput, and the server connections used.

Three set-ups, each with real `pgqueue worker bench_app:app` processes:

- direct: producer and workers connect to PostgreSQL (prepared statements on, LISTEN).
- pgbouncer + listen: everything through a `pgbouncer` (pool_mode = transaction, pool of
  --pool-size server connections), PGQUEUE_PREPARED_STATEMENTS=off, LISTEN on
  PGQUEUE_LISTEN_DSN straight to PostgreSQL.
- pgbouncer, poll only: the same with PGQUEUE_LISTEN_DSN=off: workers find runs by polling
  every --poll-interval seconds.

Latency: one idle worker, a producer enqueues --rate runs/s for --seconds (one run per
transaction); p50/p95/p99 of started_at - created_at. Drain: --runs no-op runs, --processes
workers; jobs/s from the runs' timestamps; peak server connections of the benchmark database
(pg_stat_activity) meanwhile.

    .venv/bin/python benchmarks/pooler.py
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # the topology tests' PgBouncer

from _common import bench_server, format_table, fresh_database, log, print_server_header
from scaling import Sampler, enqueue
from topology import PgBouncer
from worker import percentiles_ms, reset_queue, succeeded, timestamp_rate, wait_for_worker, wait_until, workers


@contextmanager
def environment(**values: str | None) -> Iterator[None]:
    """os.environ with `values` (None: unset) for the block: the worker processes inherit it."""
    saved = {k: os.environ.get(k) for k in values}
    for key, value in values.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def produce(dsn: str, rate: float, count: int) -> None:
    """`count` single-run enqueues at a steady `rate` per second, nothing prepared."""
    with psycopg.connect(dsn, autocommit=True, prepare_threshold=None) as conn:
        start = time.perf_counter()
        for i in range(count):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            conn.execute("SELECT pgqueue.enqueue('noop', jsonb_build_object('n', %s::int))", (i,))


def latency(dsn: str, direct: str, args: argparse.Namespace) -> list[float]:
    reset_queue(direct)
    count, warmup = int(args.rate * args.seconds), int(args.rate)
    with workers(dsn, 1, 10, burst=False) as procs:
        wait_for_worker(direct, procs)
        produce(dsn, args.rate, warmup)
        first = int(psycopg.connect(direct, autocommit=True).execute(
            "SELECT coalesce(max(id), 0) FROM pgqueue.runs").fetchone()[0])  # type: ignore[index]
        produce(dsn, args.rate, count)
        wait_until(lambda: succeeded(direct) >= warmup + count, 120, "the latency runs")
    return percentiles_ms(direct, "pgqueue.runs", first)


def drain(dsn: str, direct: str, args: argparse.Namespace) -> tuple[float, int]:
    reset_queue(direct)
    with workers(dsn, args.processes, args.concurrency, burst=False) as procs:
        wait_for_worker(direct, procs)
        sampler = Sampler(direct)
        sampler.start()
        enqueue(direct, "noop", args.runs, 0)
        wait_until(lambda: succeeded(direct) >= args.runs, 600, "the drain", interval=0.1)
        sampler.stop.set()
        sampler.join()
    return timestamp_rate(direct)[1], sampler.result().peak_connections


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--dsn", help="existing server to use (default: PGQUEUE_BENCH_DSN, else a throwaway one)")
    parser.add_argument("--rate", type=float, default=20.0, help="runs/s of the latency producer")
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of the latency producer")
    parser.add_argument("--runs", type=int, default=10_000, help="runs per drain")
    parser.add_argument("--processes", type=int, default=4, help="worker processes of the drain")
    parser.add_argument("--concurrency", type=int, default=50, help="worker --concurrency in the drain")
    parser.add_argument("--pool-size", type=int, default=10, help="PgBouncer's default_pool_size")
    parser.add_argument("--poll-interval", type=float, default=1.0, help="worker --poll-interval (default 1 s)")
    args = parser.parse_args(argv)
    rows = []
    with bench_server(args.dsn) as server, tempfile.TemporaryDirectory(prefix="pgqueue-bench-bouncer-") as folder:
        print_server_header(server)
        params = conninfo_to_dict(server.admin_dsn)
        bouncer = PgBouncer(Path(folder), int(params.get("port") or 5432), [str(params.get("user") or "postgres")],
                            pool_size=args.pool_size)
        bouncer.start()
        try:
            with fresh_database(server, "pgqueue_bench_pooler") as direct:
                through = bouncer.dsn_for(direct)
                setups = [("direct", direct, {"PGQUEUE_LISTEN_DSN": None, "PGQUEUE_PREPARED_STATEMENTS": None}),
                          ("pgbouncer + listen", through,
                           {"PGQUEUE_LISTEN_DSN": direct, "PGQUEUE_PREPARED_STATEMENTS": "off"}),
                          ("pgbouncer, poll only", through,
                           {"PGQUEUE_LISTEN_DSN": "off", "PGQUEUE_PREPARED_STATEMENTS": "off"})]
                for name, dsn, env in setups:
                    with environment(**env, PGQUEUE_POLL_INTERVAL=str(args.poll_interval)):
                        p50, p95, p99 = latency(dsn, direct, args)
                        rate, peak = drain(dsn, direct, args)
                    log(f"{name}: p50 {p50:.1f} ms, {rate:,.0f} jobs/s, {peak} server connections")
                    rows.append([name, f"{p50:.1f}", f"{p95:.1f}", f"{p99:.1f}", f"{rate:,.0f}", str(peak)])
        finally:
            bouncer.stop()
    print(f"latency:    {args.rate:g} runs/s for {args.seconds:g} s, 1 worker; drain: {args.runs:,} no-op runs, "
          f"{args.processes} workers x --concurrency {args.concurrency}; PgBouncer pool {args.pool_size}; "
          f"poll interval {args.poll_interval:g} s")
    print(format_table(["set-up", "p50 ms", "p95 ms", "p99 ms", "drain jobs/s", "peak server conns"], rows))


if __name__ == "__main__":
    main()
