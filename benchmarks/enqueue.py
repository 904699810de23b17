"""Enqueue throughput of pgqueue, next to raw-SQL ceilings measured on the same server.

What it measures (each repeated --repeat times, the median is reported):

- single: `task.enqueue(DocIn(...))` in a loop from one client process for --seconds, one run
  per transaction (autocommit, pooled connection), in jobs/s. Ceiling: `pgbench -n -M prepared
  -c 1` running a one-row INSERT of the same row shape into `bench_runs`, in tps.
- bulk: one `task.enqueue_many(items)` call of --bulk model instances, in jobs/s; the time
  includes input validation, and is split into validation / database statements / commit and
  handles. Ceiling: a psycopg `COPY bench_runs (...) FROM STDIN` of as many rows, in rows/s.
- for reference (no target): `SELECT pgqueue.enqueue(...)` run by pgbench, i.e. the SQL API
  without the Python client.

`bench_runs` is `CREATE TABLE ... (LIKE pgqueue.runs INCLUDING DEFAULTS INCLUDING IDENTITY ...)`:
the same columns, identity and defaults, without indexes unless --ceiling-indexes. Note that an
enqueue writes two rows (pgqueue.runs and pgqueue.ready, with their indexes) and a NOTIFY,
while a ceiling writes one row.

The server is a throwaway embedded PostgreSQL (removed at the end) unless --dsn or
PGQUEUE_BENCH_DSN names one; either way the benchmark runs in a fresh, migrated database.

    .venv/bin/python benchmarks/enqueue.py            # full run: 3 repeats, 5 s, 100,000 bulk
    .venv/bin/python benchmarks/enqueue.py --quick    # smoke run: 1 repeat, 1 s, 10,000 bulk
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import pstats
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from pydantic import BaseModel

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    BenchServer,
    bench_server,
    fmt_rate,
    format_table,
    fresh_database,
    log,
    median,
    print_server_header,
    run_pgbench,
)

from pgqueue import PgQueue, Task

TASK_NAME = "bench_ingest"
QUEUE = "default"
BULK_TARGET = 100_000  # jobs/s
BULK_RATIO_TARGET = 0.5  # of raw COPY
SINGLE_RATIO_TARGET = 0.8  # of pgbench INSERT at 1 client
COLUMNS = "task, queue, priority, input, run_at, expires_at, tags, metadata"
SAMPLE_INPUT = '{"doc_id":42,"title":"document 42"}'


class DocIn(BaseModel):
    doc_id: int
    title: str


@dataclass(frozen=True)
class Options:
    repeat: int
    seconds: int
    bulk: int
    ceiling_indexes: bool
    profile: bool


@dataclass(frozen=True)
class BulkTiming:
    total: float
    validate: float
    statements: float
    commit_and_handles: float


@dataclass
class Results:
    single: list[float] = field(default_factory=list)
    single_ceiling: list[float] = field(default_factory=list)
    single_sql: list[float] = field(default_factory=list)
    bulk: list[BulkTiming] = field(default_factory=list)
    bulk_ceiling: list[float] = field(default_factory=list)
    profile: str = ""


# -- setup --------------------------------------------------------------------------------------


def make_task(app: PgQueue) -> Task[[DocIn], None]:
    @app.task(name=TASK_NAME, queue=QUEUE)
    def bench_ingest(doc: DocIn) -> None:
        return None

    return bench_ingest


def create_ceiling_table(dsn: str, with_indexes: bool) -> None:
    indexes = " INCLUDING INDEXES" if with_indexes else ""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS bench_runs")
        conn.execute(
            "CREATE TABLE bench_runs (LIKE pgqueue.runs INCLUDING DEFAULTS INCLUDING IDENTITY "
            f"INCLUDING CONSTRAINTS{indexes}) WITH (fillfactor = 90)")


def reset_tables(dsn: str) -> None:
    """Empty tables and checkpoint, so that every measurement starts from the same state."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE pgqueue.runs, pgqueue.ready, bench_runs")
        with contextlib.suppress(psycopg.errors.InsufficientPrivilege):
            conn.execute("CHECKPOINT")


# -- single enqueue -----------------------------------------------------------------------------


def single_pgqueue(task: Task[[DocIn], None], seconds: float) -> float:
    """jobs/s of `task.enqueue` in a loop, one run per transaction."""
    for i in range(20):  # warm up: pool connection, prepared statement
        task.enqueue(DocIn(doc_id=i, title=f"document {i}"))
    count = 0
    start = time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        task.enqueue(DocIn(doc_id=count, title=f"document {count}"))
        count += 1
    return count / (time.perf_counter() - start)


def single_ceiling(dsn: str, seconds: int) -> float:
    script = (f"INSERT INTO bench_runs ({COLUMNS}) "
              f"VALUES ('{TASK_NAME}', '{QUEUE}', 0, '{SAMPLE_INPUT}', now(), NULL, '{{}}', '{{}}');\n")
    return run_pgbench(dsn, script, clients=1, seconds=seconds)


def single_sql_api(dsn: str, seconds: int) -> float:
    script = (f"SELECT pgqueue.enqueue('{TASK_NAME}', '{SAMPLE_INPUT}'::jsonb, "
              f"queue => '{QUEUE}', priority => 0);\n")
    return run_pgbench(dsn, script, clients=1, seconds=seconds)


# -- bulk enqueue -------------------------------------------------------------------------------


def bulk_items(n: int) -> list[DocIn]:
    return [DocIn(doc_id=i, title=f"document {i}") for i in range(n)]


def bulk_pgqueue(task: Task[[DocIn], None], items: Sequence[DocIn]) -> BulkTiming:
    """One enqueue_many call; the time split is read from when the items run out and from progress."""
    marks: dict[str, float] = {}

    def feed() -> Iterator[DocIn]:
        yield from items
        marks["validated"] = time.perf_counter()

    def progress(_done: int) -> None:
        marks["written"] = time.perf_counter()

    start = time.perf_counter()
    handles = task.enqueue_many(feed(), progress=progress)
    end = time.perf_counter()
    if len(handles) != len(items):
        raise RuntimeError(f"enqueued {len(handles)} runs for {len(items)} items")
    return BulkTiming(total=end - start, validate=marks["validated"] - start,
                      statements=marks["written"] - marks["validated"],
                      commit_and_handles=end - marks["written"])


def copy_rows(items: Sequence[DocIn]) -> list[tuple[Any, ...]]:
    now = datetime.now(UTC)
    return [(TASK_NAME, QUEUE, 0, item.model_dump_json(), now, None, [], "{}") for item in items]


def bulk_ceiling(dsn: str, rows: Sequence[tuple[Any, ...]]) -> float:
    """rows/s of one COPY FROM STDIN of `rows` into bench_runs, commit included."""
    with psycopg.connect(dsn) as conn:
        start = time.perf_counter()
        with conn.cursor() as cur, cur.copy(f"COPY bench_runs ({COLUMNS}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        conn.commit()
        return len(rows) / (time.perf_counter() - start)


def profiled(title: str, fn: Callable[[], Any], lines: int = 15) -> str:
    """cProfile of `fn`: the functions with most own time."""
    profiler = cProfile.Profile()
    profiler.runcall(fn)
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(lines)
    return f"profile: {title}\n{out.getvalue().strip()}\n"


def profile_both(dsn: str, task: Task[[DocIn], None], items: Sequence[DocIn]) -> str:
    def singles() -> None:
        for i in range(2000):
            task.enqueue(DocIn(doc_id=i, title=f"document {i}"))

    reset_tables(dsn)
    single = profiled("2,000 single enqueues", singles)
    reset_tables(dsn)
    bulk = profiled(f"one enqueue_many of {len(items):,}", lambda: task.enqueue_many(items))
    return f"{single}\n{bulk}"


# -- running ------------------------------------------------------------------------------------


def measure(step: str, fn: Callable[[], Any], dsn: str) -> Any:
    reset_tables(dsn)
    log(f"  {step} ...")
    return fn()


def run_round(dsn: str, task: Task[[DocIn], None], opts: Options, items: Sequence[DocIn],
              rows: Sequence[tuple[Any, ...]], results: Results) -> None:
    results.single.append(measure("single: pgqueue", lambda: single_pgqueue(task, opts.seconds), dsn))
    results.single_ceiling.append(measure("single: pgbench INSERT", lambda: single_ceiling(dsn, opts.seconds), dsn))
    results.single_sql.append(measure("single: pgbench pgqueue.enqueue()",
                                      lambda: single_sql_api(dsn, opts.seconds), dsn))
    results.bulk.append(measure("bulk: pgqueue enqueue_many", lambda: bulk_pgqueue(task, items), dsn))
    results.bulk_ceiling.append(measure("bulk: COPY", lambda: bulk_ceiling(dsn, rows), dsn))


def run_benchmark(dsn: str, opts: Options) -> Results:
    create_ceiling_table(dsn, opts.ceiling_indexes)
    items = bulk_items(opts.bulk)
    rows = copy_rows(items)
    results = Results()
    with PgQueue(dsn, pool_size=1) as app:
        task = make_task(app)
        for i in range(opts.repeat):
            log(f"round {i + 1}/{opts.repeat}")
            run_round(dsn, task, opts, items, rows, results)
        if opts.profile:
            log("profiling")
            results.profile = profile_both(dsn, task, items)
    return results


# -- reporting ----------------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def report(results: Results, opts: Options) -> str:
    single = median(results.single)
    single_ceiling = median(results.single_ceiling)
    single_sql = median(results.single_sql)
    bulk_time = median([b.total for b in results.bulk])
    bulk = opts.bulk / bulk_time
    copy = median(results.bulk_ceiling)
    single_ratio = single / single_ceiling
    bulk_ratio = bulk / copy
    single_target = f">= {SINGLE_RATIO_TARGET:.0%} of pgbench INSERT"
    bulk_target = f">= {BULK_TARGET:,} jobs/s and >= {BULK_RATIO_TARGET:.0%} of COPY"
    rows = [
        ["single enqueue, 1 client (ceiling: pgbench INSERT)", fmt_rate(single), fmt_rate(single_ceiling),
         f"{single_ratio:.2f}", single_target, verdict(single_ratio >= SINGLE_RATIO_TARGET)],
        [f"bulk enqueue_many of {opts.bulk:,} (ceiling: COPY)", fmt_rate(bulk), fmt_rate(copy),
         f"{bulk_ratio:.2f}", bulk_target, verdict(bulk >= BULK_TARGET and bulk_ratio >= BULK_RATIO_TARGET)],
        ["ref: pgbench SELECT pgqueue.enqueue(), 1 client", fmt_rate(single_sql), fmt_rate(single_ceiling),
         f"{single_sql / single_ceiling:.2f}", "(no target)", ""],
    ]
    header = ["metric", "pgqueue jobs/s", "ceiling rows/s", "ratio", "target", "met"]
    return format_table(header, rows)


def split_report(results: Results) -> str:
    parts = {
        "validation (pydantic, in Python)": median([b.validate for b in results.bulk]),
        "statements (psycopg params + database)": median([b.statements for b in results.bulk]),
        "commit + RunHandle objects": median([b.commit_and_handles for b in results.bulk]),
    }
    total = median([b.total for b in results.bulk])
    lines = [f"bulk time split (medians; total {total:.3f} s):"]
    lines += [f"  {name:<40} {seconds:7.3f} s  {seconds / total:5.1%}" for name, seconds in parts.items()]
    return "\n".join(lines)


def raw_values(results: Results) -> str:
    def fmt(values: Sequence[float]) -> str:
        return ", ".join(fmt_rate(v) for v in values)

    return "\n".join([
        "per-repeat values:",
        f"  single pgqueue        {fmt(results.single)}",
        f"  single pgbench INSERT {fmt(results.single_ceiling)}",
        f"  single SQL enqueue()  {fmt(results.single_sql)}",
        f"  bulk pgqueue (s)      {', '.join(f'{b.total:.3f}' for b in results.bulk)}",
        f"  bulk COPY             {fmt(results.bulk_ceiling)}",
    ])


def print_header(server: BenchServer, opts: Options) -> None:
    print_server_header(server)
    print(f"parameters: repeat={opts.repeat} (median reported), seconds={opts.seconds}, bulk={opts.bulk:,}, "
          f"ceiling table indexes={'yes' if opts.ceiling_indexes else 'none'}")


def print_results(results: Results, opts: Options) -> None:
    print()
    print(report(results, opts))
    print()
    print("note: each pgqueue enqueue writes 2 rows (pgqueue.runs with 3 indexes + pgqueue.ready with 2)")
    print("      and one pg_notify per statement; each ceiling writes 1 row into bench_runs"
          f" ({'with' if opts.ceiling_indexes else 'no'} indexes).")
    print()
    print(split_report(results))
    print()
    print(raw_values(results))
    if results.profile:
        print()
        print(results.profile)


# -- command line -------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> tuple[Options, str | None]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--dsn", help="existing server to use (default: PGQUEUE_BENCH_DSN, else a throwaway one)")
    parser.add_argument("--repeat", type=int, default=3, help="repeats of every measurement (median reported)")
    parser.add_argument("--seconds", type=int, default=5, help="duration of each single-enqueue measurement")
    parser.add_argument("--bulk", type=int, default=100_000, help="runs in the bulk enqueue")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 repeat, 1 s, 10,000 bulk")
    parser.add_argument("--ceiling-indexes", action="store_true",
                        help="give bench_runs the indexes of pgqueue.runs (default: none)")
    parser.add_argument("--profile", action="store_true", help="also cProfile one bulk enqueue")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeat, args.seconds, args.bulk = 1, 1, 10_000
    opts = Options(repeat=args.repeat, seconds=args.seconds, bulk=args.bulk,
                   ceiling_indexes=args.ceiling_indexes, profile=args.profile)
    return opts, args.dsn


def main(argv: Sequence[str] | None = None) -> None:
    opts, dsn = parse_args(argv)
    with bench_server(dsn) as server:
        print_header(server, opts)
        with fresh_database(server, "pgqueue_bench_enqueue") as db:
            results = run_benchmark(db, opts)
        print_results(results, opts)


if __name__ == "__main__":
    main()
