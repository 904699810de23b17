"""One drain by an in-process worker: jobs/s and the worker's own CPU seconds.

For A/B comparisons of two checkouts on a shared machine: run it alternately from each
checkout's .venv, and compare the medians of the CPU seconds, which noise moves far less than
the rates. (The benchmarks with pgbench ceilings are worker.py and durable.py.) On its own
throwaway server it also prints the server processes' CPU seconds per run (Linux /proc).

    .venv/bin/python benchmarks/inprocess_drain.py --runs 10000 --concurrency 10
    .venv/bin/python benchmarks/inprocess_drain.py --runs 5000 --concurrency 100 --steps 3
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from pathlib import Path

from _common import bench_server, fresh_database

from pgqueue import PgQueue, current_run
from pgqueue.worker import Worker, WorkerSettings


def server_cpu_seconds(data_dir: Path) -> float:
    """CPU seconds of the server's processes (the postmaster's count includes its ended children):
    those whose working folder is the server's data folder."""
    total, tick = 0.0, os.sysconf("SC_CLK_TCK")
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if not os.readlink(f"/proc/{pid}/cwd").startswith(str(data_dir)):
                continue
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # ended meanwhile, or not ours to read
            continue
        total += sum(int(f) for f in fields[11:15]) / tick  # utime, stime, cutime, cstime
    return total


def identity(n: int) -> int:
    return n


async def drain(dsn: str, runs: int, concurrency: int, steps: int) -> tuple[float, float, float]:
    app = PgQueue(dsn)

    @app.task
    async def work(n: int) -> int:
        total = 0
        for i in range(steps):
            total += await current_run().step(f"s{i}", identity, n)
        return total

    work.enqueue_many([{"n": i} for i in range(runs)])
    worker = Worker(app, WorkerSettings(concurrency=concurrency, burst=True, poll_interval=0.05))
    started, cpu = time.perf_counter(), time.process_time()
    await worker.serve()
    rate, cpu_s = runs / (time.perf_counter() - started), time.process_time() - cpu
    await app.aclose()
    counters = worker.metrics.counters
    trips = sum(counters["pgqueue_claims_total"].values()) + sum(counters["pgqueue_outcome_writes_total"].values())
    return rate, cpu_s, trips / runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", help="existing server (default: a throwaway one)")
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--steps", type=int, default=0, help="checkpointed steps per run")
    args = parser.parse_args()
    with bench_server(args.dsn) as server, fresh_database(server, "inprocess") as dsn:
        data_dir = server.embedded.data_dir.resolve() if server.embedded else None
        before = server_cpu_seconds(data_dir) if data_dir else 0.0
        rate, cpu, trips = asyncio.run(drain(dsn, args.runs, args.concurrency, args.steps))
        server_cpu = server_cpu_seconds(data_dir) - before if data_dir else None
    line = (f"{args.runs:,} runs, concurrency {args.concurrency}, {args.steps} step(s): "
            f"{rate:,.0f} jobs/s, {trips:.3f} claim and outcome round trips per run, "
            f"worker CPU {cpu:.2f} s ({cpu / args.runs * 1e6:.0f} µs/run)")
    if server_cpu is not None:
        line += f", PostgreSQL CPU {server_cpu:.2f} s ({server_cpu / args.runs * 1e6:.0f} µs/run)"
    print(line)


if __name__ == "__main__":
    main()
