"""Streaming in pgqueue: how many chunks one worker publishes per second, and how fast a reader
gets them.

What it measures, with one real `pgqueue worker stream_bench_app:app` process:

- publish: --runs runs at once (--concurrency of the worker), each streaming --chunks small str
  chunks ("tok123 ") in a tight loop and then waiting until all are stored
  (`await ctx.flush_stream()`). Per run: chunks / the task's own elapsed time; overall: all
  chunks / (last run's finished_at - first run's started_at) on the database clock, which
  includes the claim and the completion. Checked afterwards: every run's chunks are stored, with
  offsets 0..n-1.
- latency: one run streams --paced chunks, --interval seconds apart, each holding the wall-clock
  time it was handed to `ctx.stream`; a reader in this process follows it with
  `handle.stream()` (LISTEN/NOTIFY) and notes when each chunk arrives. Latency = arrival -
  hand-over (same machine, same clock): p50, p99, max.

The server is a throwaway embedded PostgreSQL unless --dsn or PGQUEUE_BENCH_DSN names one; either
way the benchmark runs in a fresh, migrated database.

    .venv/bin/python benchmarks/streaming.py            # 1 run of 100,000 chunks, 4 runs of 25,000, 2,000 paced
    .venv/bin/python benchmarks/streaming.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import bench_server, format_table, fresh_database, log, print_server_header
from worker import worker_env

from pgqueue import PgQueue


@contextlib.contextmanager
def worker(dsn: str, concurrency: int) -> Iterator[subprocess.Popen[bytes]]:
    argv = [sys.executable, "-m", "pgqueue_cli", "worker", "stream_bench_app:app", "--concurrency", str(concurrency),
            "--log-level", "WARNING"]
    with tempfile.TemporaryDirectory(prefix="pgqueue-bench-stream-") as folder:
        path = Path(folder) / "worker.log"
        with path.open("wb") as stderr:
            proc = subprocess.Popen(argv, env=worker_env(dsn), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=stderr)
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            if proc.wait(timeout=120) != 0:
                raise RuntimeError(f"worker exited with {proc.returncode}:\n{path.read_text()[-3000:]}")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def publish(app: PgQueue, runs: int, chunks: int) -> list[str]:
    handles = [app.enqueue("publish", {"n": chunks}, queue="default") for _ in range(runs)]
    seconds = [float(h.result(timeout=600)) for h in handles]
    ids = [h.id for h in handles]
    with app.db.pool().connection() as conn:
        span, = conn.execute("SELECT extract(epoch FROM max(finished_at) - min(started_at)) FROM pgqueue.runs"
                             " WHERE id = ANY(%s)", (ids,)).fetchone() or (None,)
        stored = conn.execute('SELECT run_id, count(*), min("offset"), max("offset") FROM pgqueue.stream_chunks'
                              " WHERE run_id = ANY(%s) GROUP BY run_id", (ids,)).fetchall()
    assert sorted(stored) == sorted((i, chunks, 0, chunks - 1) for i in ids), "chunks missing or out of place"
    per_run = sorted(chunks / s for s in seconds)
    return [f"{runs} x {chunks:,}", f"{per_run[len(per_run) // 2]:,.0f}", f"{runs * chunks / float(span):,.0f}"]


def latency(app: PgQueue, n: int, interval: float) -> list[str]:
    handle = app.enqueue("paced", {"n": n, "interval": interval}, queue="default")
    delays = []
    for chunk in handle.stream(timeout=600):
        delays.append(time.time() - chunk.data["sent"])
    assert len(delays) == n and [c.offset for c in handle.stream()] == list(range(n))
    ms = [d * 1000 for d in delays]
    return [f"{n:,}", f"{1 / interval:,.0f}/s", f"{percentile(ms, 0.5):.1f}", f"{percentile(ms, 0.99):.1f}",
            f"{max(ms):.1f}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", default=None)
    parser.add_argument("--chunks", type=int, default=100_000, help="chunks of the single publishing run")
    parser.add_argument("--paced", type=int, default=2_000, help="chunks of the latency run")
    parser.add_argument("--interval", type=float, default=0.005, help="seconds between the latency run's chunks")
    parser.add_argument("--quick", action="store_true", help="smoke run: 20,000 chunks, 500 paced")
    args = parser.parse_args()
    if args.quick:
        args.chunks, args.paced = 20_000, 500
    with bench_server(args.dsn) as server, fresh_database(server, "bench_stream") as dsn:
        print_server_header(server)
        with worker(dsn, concurrency=8), PgQueue(dsn) as app:
            log("warming up")
            publish(app, 1, 1_000)
            log("publishing")
            rows = [publish(app, 1, args.chunks), publish(app, 4, args.chunks // 4)]
            log("latency")
            lat = latency(app, args.paced, args.interval)
        print()
        print(format_table(["runs x chunks", "chunks/s per run (median)", "chunks/s overall (db clock)"], rows))
        print()
        print(format_table(["paced chunks", "rate", "p50 ms", "p99 ms", "max ms"], [lat]))


if __name__ == "__main__":
    main()
