"""Throughput against the number of worker processes (1, 2, 4, 8 by default), and where it stops
growing.

For each process count, --runs runs are enqueued, then that many real `pgqueue worker
bench_app:app --burst --concurrency C` processes drain them (as in benchmarks/worker.py: jobs/s
from the runs' own timestamps, median of --repeat drains). Two workloads:

- noop: the task does nothing, so each run costs only the worker's and the database's work
  (claim, complete): this finds the ceiling of the database and of the machine's CPUs.
- io: the task awaits --io-ms milliseconds (an API call, say): runs are bound by free slots,
  so throughput grows with processes x concurrency until the database becomes the limit.

Beside jobs/s it samples, every 50 ms during a drain, the database's backends of the benchmark
database (peak connections; mean active ones; mean waiting on a lock: claim contention), and
reads the CPU seconds the embedded server spent (its postmaster's own and its children's, from
/proc: the database's CPU) against the wall time of the drain.

Prints a table; with matplotlib installed (`pip install 'pgqueue[plot]'`) also writes a PNG plot
(--png). The server is a throwaway embedded PostgreSQL unless --dsn / PGQUEUE_BENCH_DSN names
one (then no database CPU is reported).

    .venv/bin/python benchmarks/scaling.py --png docs/scaling.png
    .venv/bin/python benchmarks/scaling.py --quick
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import BenchServer, bench_server, format_table, fresh_database, log, median, print_server_header
from worker import (
    Drain,
    execute,
    machine_busy_seconds,
    reset_queue,
    settle,
    succeeded,
    timestamp_rate,
    wait_for_worker,
    wait_until,
    workers,
)

ENQUEUE_CHUNK = 50_000


@dataclass(frozen=True)
class Sample:
    """What the database's backends of the benchmark database did during one drain."""

    peak_connections: int
    mean_active: float
    mean_lock_waits: float


@dataclass(frozen=True)
class Point:
    processes: int
    drain: Drain
    db_cpu: float | None  # CPU seconds of the server during the drain
    sample: Sample


def enqueue(dsn: str, task: str, count: int, io_ms: float) -> None:
    # noop takes only n; io_wait also the milliseconds to wait
    statement = ("SELECT count(*) FROM pgqueue.enqueue_many(%s, ARRAY(SELECT jsonb_build_object('n', g)"
                 " || CASE WHEN %s THEN jsonb_build_object('ms', %s::float8) ELSE '{}' END"
                 " FROM generate_series(%s::int, %s::int) AS g))")
    with psycopg.connect(dsn, autocommit=True) as conn:
        for start in range(0, count, ENQUEUE_CHUNK):
            conn.execute(statement, (task, task == "io_wait", io_ms, start + 1, min(count, start + ENQUEUE_CHUNK)))
    settle(dsn, "pgqueue.runs, pgqueue.ready")


def server_cpu_seconds(server: BenchServer) -> float | None:
    """CPU seconds of the embedded server so far: the postmaster's and its children's (the
    backends of exited connections are counted in the postmaster's children times); None for a
    server given by DSN."""
    if server.embedded is None:
        return None
    pid_file = server.embedded.pgdata / "postmaster.pid"
    pid = int(pid_file.read_text().split("\n", 1)[0])
    ticks = os.sysconf("SC_CLK_TCK")

    def own_and_children(p: int) -> float:
        fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        return sum(int(v) for v in fields[11:15]) / ticks  # utime stime cutime cstime

    total = own_and_children(pid)
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        with contextlib.suppress(OSError, ValueError):  # exited meanwhile: then counted in the
            total += own_and_children(int(child))  # postmaster's children times
    return total


class Sampler(threading.Thread):
    def __init__(self, dsn: str) -> None:
        super().__init__(daemon=True)
        self.dsn = dsn
        self.dbname = str(conninfo_to_dict(dsn).get("dbname"))
        self.stop = threading.Event()
        self.rows: list[tuple[int, int, int]] = []

    def run(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            while not self.stop.wait(0.05):
                row = conn.execute(
                    "SELECT count(*), count(*) FILTER (WHERE state = 'active'),"
                    " count(*) FILTER (WHERE state = 'active' AND wait_event_type = 'Lock')"
                    " FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()", (self.dbname,)).fetchone()
                assert row is not None
                self.rows.append((int(row[0]), int(row[1]), int(row[2])))

    def result(self) -> Sample:
        rows = [r for r in self.rows if r[0] > 0] or [(0, 0, 0)]
        return Sample(peak_connections=max(r[0] for r in rows),
                      mean_active=sum(r[1] for r in rows) / len(rows),
                      mean_lock_waits=sum(r[2] for r in rows) / len(rows))


def process_cpu_seconds(pids: Sequence[int]) -> float:
    """CPU seconds (user + system) of running processes, from /proc."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def drain(server: BenchServer, dsn: str, processes: int, args: argparse.Namespace) -> Point:
    """Workers started and idle first, the runs enqueued on a paused queue, then the queue
    resumed: CPU and timestamps cover the drain alone, not the processes' start-up."""
    reset_queue(dsn)
    with workers(dsn, processes, args.concurrency, burst=False) as procs:
        wait_for_worker(dsn, procs)
        execute(dsn, "SELECT pgqueue.pause_queue('default')")
        enqueue(dsn, args.task, args.runs, args.io_ms)
        sampler = Sampler(dsn)
        sampler.start()
        pids = [p.pid for p in procs]
        cpu0, busy0, db0, start = (process_cpu_seconds(pids), machine_busy_seconds(), server_cpu_seconds(server),
                                   time.perf_counter())
        execute(dsn, "SELECT pgqueue.resume_queue('default')")
        wait_until(lambda: succeeded(dsn) >= args.runs, 1200, "the drain", interval=0.1)
        wall = time.perf_counter() - start
        cpu, busy, db1 = process_cpu_seconds(pids) - cpu0, machine_busy_seconds() - busy0, server_cpu_seconds(server)
        sampler.stop.set()
        sampler.join()
    done, rate = timestamp_rate(dsn)
    if done != args.runs:
        raise RuntimeError(f"drain finished with {done} of {args.runs} runs succeeded")
    result = Drain(rate=rate, wall=wall, worker_cpu=cpu, machine_cpu=busy)
    return Point(processes, result, None if db0 is None or db1 is None else db1 - db0, sampler.result())


def measure(server: BenchServer, dsn: str, args: argparse.Namespace) -> list[Point]:
    points = []
    for processes in args.processes:
        tries = []
        for i in range(args.repeat):
            point = drain(server, dsn, processes, args)
            log(f"{processes} process(es), drain {i + 1}/{args.repeat}: {point.drain.rate:,.0f} jobs/s")
            tries.append(point)
        rates = [p.drain.rate for p in tries]
        points.append(min(tries, key=lambda p: abs(p.drain.rate - median(rates))))  # the median drain
    return points


def table(points: Sequence[Point]) -> str:
    base = points[0].drain.rate
    rows = []
    for p in points:
        cpus = os.cpu_count() or 1
        db = "-" if p.db_cpu is None else f"{p.db_cpu / p.drain.wall:.2f}"
        rows.append([str(p.processes), f"{p.drain.rate:,.0f}", f"{p.drain.rate / base:.2f}x",
                     f"{p.drain.worker_cpu / p.drain.wall:.2f}", db,
                     f"{p.drain.machine_cpu / p.drain.wall / cpus:.0%}", str(p.sample.peak_connections),
                     f"{p.sample.mean_active:.1f}", f"{p.sample.mean_lock_waits:.2f}"])
    return format_table(["processes", "jobs/s", "vs 1", "worker CPUs", "database CPUs", "machine busy",
                         "peak conns", "active", "lock waits"], rows)


def plot(points: Sequence[Point], path: Path, title: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(6, 4))
    xs = [p.processes for p in points]
    ax.plot(xs, [p.drain.rate for p in points], marker="o", label="measured")
    ax.plot(xs, [points[0].drain.rate * x for x in xs], linestyle="--", color="grey", label="linear")
    ax.set_xscale("log", base=2)
    ax.set_xticks(xs, [str(x) for x in xs])
    ax.set_xlabel("worker processes")
    ax.set_ylabel("jobs/s")
    ax.set_ylim(bottom=0)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return True


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--dsn", help="existing server to use (default: PGQUEUE_BENCH_DSN, else a throwaway one)")
    parser.add_argument("--task", choices=["noop", "io"], default="noop",
                        help="noop: no work per run; io: each run awaits --io-ms")
    parser.add_argument("--io-ms", type=float, default=20.0, help="milliseconds each io run waits")
    parser.add_argument("--runs", type=int, default=10_000, help="runs per drain")
    parser.add_argument("--concurrency", type=int, default=50, help="worker --concurrency of each process")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2, 4, 8], help="process counts to measure")
    parser.add_argument("--repeat", type=int, default=3, help="drains per process count (the median is reported)")
    parser.add_argument("--png", type=Path, default=None, help="write a plot here (needs matplotlib)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 repeat, 2,000 runs")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeat, args.runs = 1, 2_000
    args.task = "io_wait" if args.task == "io" else "noop"
    with bench_server(args.dsn) as server:
        print_server_header(server)
        print(f"workload:   {args.task}{f' ({args.io_ms:g} ms)' if args.task == 'io_wait' else ''}, "
              f"{args.runs:,} runs per drain, --concurrency {args.concurrency} per process, "
              f"median of {args.repeat}")
        with fresh_database(server, "pgqueue_bench_scaling") as dsn:
            points = measure(server, dsn, args)
    print(table(points))
    print("worker CPUs / database CPUs: CPU seconds per wall second of the drain (1.00 = one core busy); "
          "machine busy: all CPUs; active / lock waits: mean backends running / waiting on a lock")
    if args.png:
        title = f"pgqueue drain, {args.task}, concurrency {args.concurrency}, {os.cpu_count()} CPUs"
        if plot(points, args.png, title):
            print(f"plot:       {args.png}")
        else:
            print("plot:       skipped (matplotlib is not installed: pip install 'pgqueue[plot]')")


if __name__ == "__main__":
    main()
