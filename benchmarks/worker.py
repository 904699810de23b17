"""Worker throughput and latency of pgqueue, next to raw-SQL ceilings measured on the same server.

What it measures (the run timings come from the runs' own timestamps, i.e. the database clock):

- drain: --runs no-op runs are enqueued, then real `pgqueue worker bench_app:app --burst
  --concurrency C` processes (1, then 2) run until the queue is empty. jobs/s = runs /
  (max(finished_at) - min(started_at)), which leaves out process start-up; the wall time from
  spawning the processes to their exit is reported too. Repeated --repeat times (median).
  Ceilings: pgbench (-n -M prepared, --seconds, 1 and 2 clients) running a naive one-row claim +
  complete loop on a plain table `bench_jobs`, and a batched variant (100 rows per statement).
- latency: one idle worker; a producer enqueues --rate runs/s for --latency-seconds, one run per
  transaction; latency = started_at - created_at per run (p50/p95/p99). Ceiling: a minimal
  LISTEN/NOTIFY + one-row claim loop in plain psycopg on `bench_jobs`, fed the same way.
- backlog: 1 worker drains --backlog-drain runs while at least 1,000 (resp. --backlog) more stay
  queued behind them; jobs/s until the N-th run finished. Ceiling: the naive one-row pgbench loop
  (1 client, -t N) on `bench_jobs` holding as many rows.

The server is a throwaway embedded PostgreSQL (removed at the end) unless --dsn or
PGQUEUE_BENCH_DSN names one; either way the benchmark runs in a fresh, migrated database.
--statements (throwaway server only) preloads pg_stat_statements and prints the statements of
one 1-worker drain.

    .venv/bin/python benchmarks/worker.py            # full run: 3 repeats, 20,000 runs, 1M backlog
    .venv/bin/python benchmarks/worker.py --quick    # smoke run: 1 repeat, 5,000 runs, 100k backlog
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    BenchServer,
    bench_server,
    fmt_rate,
    format_table,
    fresh_database,
    log,
    median,
    parse_tps,
    pgbench_argv,
    print_server_header,
    run_pgbench,
)

BENCH_DIR = Path(__file__).resolve().parent
TASK_NAME = "noop"
APP_PATH = "bench_app:app"
ENQUEUE_CHUNK = 50_000
BATCH = 100  # rows per statement in the batched ceiling
SMALL_BACKLOG = 1_000
DRAIN_TARGET_1 = 6_000  # jobs/s, 1 worker process
DRAIN_TARGET_2 = 10_000  # jobs/s, 2 worker processes
LATENCY_P99_TARGET_MS = 5.0
PGQUEUE_TABLES = "pgqueue.runs, pgqueue.ready, pgqueue.attempts, pgqueue.workers"


@dataclass(frozen=True)
class Options:
    runs: int
    concurrency: int
    repeat: int
    seconds: int
    rate: float
    latency_seconds: float
    backlog: int
    backlog_drain: int
    statements: bool
    only_backlog: bool = False


@dataclass(frozen=True)
class Drain:
    """One drain: rate from the runs' timestamps, wall time, and CPU seconds spent meanwhile."""

    rate: float
    wall: float
    worker_cpu: float
    machine_cpu: float


@dataclass
class Results:
    drains: dict[int, list[Drain]] = field(default_factory=lambda: {1: [], 2: []})
    one_row: dict[int, list[float]] = field(default_factory=lambda: {1: [], 2: []})
    batched: dict[int, list[float]] = field(default_factory=lambda: {1: [], 2: []})
    latency: list[float] = field(default_factory=list)  # p50, p95, p99 in ms
    latency_ceiling: list[float] = field(default_factory=list)
    backlog: dict[int, list[Drain]] = field(default_factory=dict)
    backlog_ceiling: dict[int, float] = field(default_factory=dict)
    statements: str = ""


# -- database helpers ---------------------------------------------------------------------------


def execute(dsn: str, *statements: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)  # type: ignore[arg-type]


def fetch_one(dsn: str, statement: str, params: Any = None) -> tuple[Any, ...]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(statement, params).fetchone()  # type: ignore[arg-type]
    assert row is not None
    return row


def settle(dsn: str, tables: str) -> None:
    """Fresh statistics and a checkpoint, so every measurement starts from the same state."""
    execute(dsn, f"VACUUM ANALYZE {tables}", "CHECKPOINT")


def reset_queue(dsn: str) -> None:
    execute(dsn, f"TRUNCATE {PGQUEUE_TABLES}")


def enqueue_noops(dsn: str, count: int) -> None:
    """`count` due runs of the no-op task, through the SQL API in chunks of ENQUEUE_CHUNK."""
    statement = ("SELECT count(*) FROM pgqueue.enqueue_many(%s, ARRAY(SELECT jsonb_build_object('n', g) "
                 "FROM generate_series(%s::int, %s::int) AS g), queue => 'default')")
    with psycopg.connect(dsn, autocommit=True) as conn:
        for start in range(0, count, ENQUEUE_CHUNK):
            end = min(count, start + ENQUEUE_CHUNK)
            conn.execute(statement, (TASK_NAME, start + 1, end))


def prepare_queue(dsn: str, count: int) -> None:
    reset_queue(dsn)
    enqueue_noops(dsn, count)
    settle(dsn, "pgqueue.runs, pgqueue.ready")


def succeeded(dsn: str) -> int:
    """Succeeded runs, counted in the small attempts table (polling pgqueue.runs would load the server)."""
    return int(fetch_one(dsn, "SELECT count(*) FROM pgqueue.attempts WHERE outcome = 'succeeded'")[0])


# -- worker processes ---------------------------------------------------------------------------


def worker_argv(concurrency: int, burst: bool) -> list[str]:
    argv = [sys.executable, "-m", "pgqueue_cli", "worker", APP_PATH, "--concurrency", str(concurrency),
            "--log-level", "WARNING"]
    return [*argv, "--burst"] if burst else argv


def worker_env(dsn: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PGQUEUE_DSN"] = dsn
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(BENCH_DIR), env.get("PYTHONPATH")]))
    return env


@contextlib.contextmanager
def workers(dsn: str, count: int, concurrency: int, *, burst: bool) -> Iterator[list[subprocess.Popen[bytes]]]:
    """`count` worker processes; SIGTERMed (if still running) and checked at the end of the block."""
    with tempfile.TemporaryDirectory(prefix="pgqueue-bench-worker-") as folder:
        logs = [Path(folder) / f"worker-{i}.log" for i in range(count)]
        procs = [subprocess.Popen(worker_argv(concurrency, burst), env=worker_env(dsn), stdin=subprocess.DEVNULL,
                                  stdout=subprocess.DEVNULL, stderr=path.open("wb")) for path in logs]
        try:
            yield procs
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            for proc, path in zip(procs, logs, strict=True):
                if proc.wait(timeout=120) != 0:
                    raise RuntimeError(f"worker exited with {proc.returncode}:\n{path.read_text()[-3000:]}")


def wait_until(condition: Any, timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def wait_for_worker(dsn: str, procs: Sequence[subprocess.Popen[bytes]]) -> None:
    """Until the workers registered; then a moment for their LISTEN connection."""
    def ready() -> bool:
        if any(p.poll() is not None for p in procs):
            raise RuntimeError("a worker exited during start-up")
        return int(fetch_one(dsn, "SELECT count(*) FROM pgqueue.workers WHERE stopped_at IS NULL")[0]) >= len(procs)

    wait_until(ready, 60, "the workers to register")
    time.sleep(1.0)


# -- CPU accounting -----------------------------------------------------------------------------


def machine_busy_seconds() -> float:
    """CPU seconds spent (not idle) by the whole machine since boot, from /proc/stat; 0 if unknown."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return 0.0
    ticks = [int(v) for v in fields]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# -- drain --------------------------------------------------------------------------------------


def timestamp_rate(dsn: str) -> tuple[int, float]:
    """(succeeded runs, runs/s between the first start and the last finish)."""
    done, span = fetch_one(dsn, "SELECT count(*) FILTER (WHERE status = 'succeeded'), "
                                "extract(epoch FROM max(finished_at) - min(started_at))::float8 FROM pgqueue.runs")
    return int(done), int(done) / float(span)


def drain_once(dsn: str, processes: int, opts: Options) -> Drain:
    prepare_queue(dsn, opts.runs)
    cpu0, busy0, start = children_cpu_seconds(), machine_busy_seconds(), time.perf_counter()
    with workers(dsn, processes, opts.concurrency, burst=True) as procs:
        for proc in procs:
            proc.wait(timeout=600)
    wall = time.perf_counter() - start
    cpu, busy = children_cpu_seconds() - cpu0, machine_busy_seconds() - busy0
    done, rate = timestamp_rate(dsn)
    if done != opts.runs:
        raise RuntimeError(f"drain finished with {done} of {opts.runs} runs succeeded")
    return Drain(rate=rate, wall=wall, worker_cpu=cpu, machine_cpu=busy)


# -- latency ------------------------------------------------------------------------------------


def produce(dsn: str, statement: str, rate: float, count: int) -> None:
    """`count` single-statement transactions at a steady `rate` per second (absolute schedule)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        start = time.perf_counter()
        for i in range(count):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            conn.execute(statement, (i,), prepare=True)  # type: ignore[arg-type]


def percentiles_ms(dsn: str, table: str, min_id: int) -> list[float]:
    row = fetch_one(dsn, "SELECT percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP "
                         "(ORDER BY extract(epoch FROM started_at - created_at) * 1000) "
                         f"FROM {table} WHERE id > %s", (min_id,))
    return [float(v) for v in row[0]]


def latency_pgqueue(dsn: str, opts: Options) -> list[float]:
    """p50/p95/p99 ms of started_at - created_at with one idle worker and a steady producer."""
    reset_queue(dsn)
    statement = f"SELECT pgqueue.enqueue('{TASK_NAME}', jsonb_build_object('n', %s::int), queue => 'default')"
    count = int(opts.rate * opts.latency_seconds)
    warmup = int(opts.rate)
    with workers(dsn, 1, opts.concurrency, burst=False) as procs:
        wait_for_worker(dsn, procs)
        produce(dsn, statement, opts.rate, warmup)  # prepared statements, pool connections
        first = int(fetch_one(dsn, "SELECT coalesce(max(id), 0) FROM pgqueue.runs")[0])
        produce(dsn, statement, opts.rate, count)
        wait_until(lambda: succeeded(dsn) >= warmup + count, 60, "the latency runs to finish")
    return percentiles_ms(dsn, "pgqueue.runs", first)


def raw_listener(dsn: str, stop: threading.Event) -> None:
    """The ceiling's consumer: on each notification, claim and complete queued rows one by one."""
    with psycopg.connect(dsn, autocommit=True) as listen, psycopg.connect(dsn, autocommit=True) as work:
        listen.execute("LISTEN bench_ready")
        while not stop.is_set():
            for _ in listen.notifies(timeout=0.2, stop_after=1):
                while work.execute(CLAIM_ONE, prepare=True).fetchone() is not None:
                    pass


def latency_ceiling(dsn: str, opts: Options) -> list[float]:
    fill_bench_jobs(dsn, 0)
    statement = ("WITH j AS (INSERT INTO bench_jobs (payload) VALUES (jsonb_build_object('n', %s::int)) "
                 "RETURNING id) SELECT pg_notify('bench_ready', '') FROM j")
    stop = threading.Event()
    listener = threading.Thread(target=raw_listener, args=(dsn, stop), daemon=True)
    listener.start()
    try:
        time.sleep(0.5)
        produce(dsn, statement, opts.rate, int(opts.rate))
        first = int(fetch_one(dsn, "SELECT coalesce(max(id), 0) FROM bench_jobs")[0])
        produce(dsn, statement, opts.rate, int(opts.rate * opts.latency_seconds))
        wait_until(lambda: not fetch_one(dsn, "SELECT count(*) FROM bench_jobs WHERE status = 'queued'")[0],
                   30, "the ceiling's rows to be claimed")
    finally:
        stop.set()
        listener.join()
    return percentiles_ms(dsn, "bench_jobs", first)


# -- backlog ------------------------------------------------------------------------------------


def nth_finish_rate(dsn: str, n: int) -> float:
    """runs/s from the first start to the n-th finish (the worker overshoots before it stops)."""
    span = fetch_one(dsn, "SELECT extract(epoch FROM (SELECT finished_at FROM pgqueue.runs "
                          "WHERE status = 'succeeded' ORDER BY finished_at OFFSET %s LIMIT 1) "
                          "- (SELECT min(started_at) FROM pgqueue.runs))::float8", (n - 1,))[0]
    return n / float(span)


def backlog_once(dsn: str, backlog: int, opts: Options) -> Drain:
    """One worker over --backlog-drain runs with `backlog` more queued behind them (rate, wall, CPU)."""
    prepare_queue(dsn, backlog + opts.backlog_drain)
    cpu0, busy0, start = children_cpu_seconds(), machine_busy_seconds(), time.perf_counter()
    with workers(dsn, 1, opts.concurrency, burst=False):
        wait_until(lambda: succeeded(dsn) >= opts.backlog_drain, 600, "the backlog drain", interval=0.1)
    wall = time.perf_counter() - start
    cpu, busy = children_cpu_seconds() - cpu0, machine_busy_seconds() - busy0
    return Drain(rate=nth_finish_rate(dsn, opts.backlog_drain), wall=wall, worker_cpu=cpu, machine_cpu=busy)


# -- ceilings (pgbench on a plain table) --------------------------------------------------------

BENCH_JOBS_DDL = """
CREATE TABLE bench_jobs (
    id          bigserial PRIMARY KEY,
    status      text NOT NULL DEFAULT 'queued',
    payload     jsonb NOT NULL DEFAULT '{}',
    run_at      timestamptz NOT NULL DEFAULT now(),
    created_at  timestamptz NOT NULL DEFAULT now(),
    started_at  timestamptz,
    finished_at timestamptz
);
CREATE INDEX bench_jobs_queued ON bench_jobs (id) WHERE status = 'queued'
"""

CLAIM_ONE = ("UPDATE bench_jobs SET status = 'running', started_at = now() "
             "WHERE id = (SELECT id FROM bench_jobs WHERE status = 'queued' ORDER BY id LIMIT 1 "
             "FOR UPDATE SKIP LOCKED) RETURNING id")

# claim and complete are separate transactions, like a worker's (no transaction held while a task runs)
ONE_ROW_SCRIPT = f"""{CLAIM_ONE} \\gset
UPDATE bench_jobs SET status = 'done', finished_at = now() WHERE id = :id;
"""

BATCHED_SCRIPT = f"""WITH picked AS (SELECT id FROM bench_jobs WHERE status = 'queued' ORDER BY id LIMIT {BATCH}
    FOR UPDATE SKIP LOCKED),
claimed AS (UPDATE bench_jobs j SET status = 'running', started_at = now() FROM picked
    WHERE j.id = picked.id RETURNING j.id)
SELECT array_agg(id) AS ids FROM claimed \\gset
UPDATE bench_jobs SET status = 'done', finished_at = now() WHERE id = ANY (:ids::bigint[]);
"""


def fill_bench_jobs(dsn: str, rows: int) -> None:
    execute(dsn, "TRUNCATE bench_jobs RESTART IDENTITY")
    if rows:
        execute(dsn, f"INSERT INTO bench_jobs (payload) SELECT jsonb_build_object('n', g) "
                     f"FROM generate_series(1, {rows}) AS g")
    settle(dsn, "bench_jobs")


def queued_rows(dsn: str) -> int:
    return int(fetch_one(dsn, "SELECT count(*) FROM bench_jobs WHERE status = 'queued'")[0])


def pgbench_ceiling(dsn: str, script: str, clients: int, seconds: int, rows_per_tx: int, prefill: int) -> float:
    """rows/s of a claim-and-complete script; fails if the table ran dry (the rate would be wrong)."""
    fill_bench_jobs(dsn, prefill)
    tps = run_pgbench(dsn, script, clients=clients, seconds=seconds)
    if queued_rows(dsn) == 0:
        raise RuntimeError(f"bench_jobs ran dry ({prefill:,} rows); raise the prefill")
    return tps * rows_per_tx


def run_pgbench_transactions(dsn: str, script_text: str, *, clients: int, transactions: int) -> float:
    """Like `run_pgbench`, but a fixed number of transactions per client (-t) instead of a duration."""
    with tempfile.NamedTemporaryFile("w", suffix=".sql", prefix="pgbench-") as script:
        script.write(script_text)
        script.flush()
        argv = pgbench_argv(dsn, Path(script.name), clients=clients, seconds=1)
        at = argv.index("-T")
        argv[at:at + 2] = ["-t", str(transactions)]
        result = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, env=pgbench_env(dsn))
    if result.returncode != 0:
        raise RuntimeError(f"pgbench failed:\n{result.stderr}{result.stdout}")
    return parse_tps(result.stdout)


def pgbench_env(dsn: str) -> dict[str, str]:
    env = dict(os.environ)
    password = conninfo_to_dict(dsn).get("password")
    if password:
        env["PGPASSWORD"] = str(password)
    return env


def backlog_ceiling(dsn: str, backlog: int, drain: int) -> float:
    fill_bench_jobs(dsn, backlog + drain)
    return run_pgbench_transactions(dsn, ONE_ROW_SCRIPT, clients=1, transactions=drain)


def one_row_prefill(seconds: int) -> int:
    return seconds * 60_000


def batched_prefill(seconds: int) -> int:
    return seconds * 400_000


# -- pg_stat_statements (throwaway server only) -------------------------------------------------


def enable_statements(server: BenchServer) -> None:
    if server.embedded is None:
        raise SystemExit("--statements needs the throwaway server (it restarts it with pg_stat_statements)")
    execute(server.admin_dsn, "ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'",
            "ALTER SYSTEM SET pg_stat_statements.track = 'all'")
    server.embedded.restart()


def statements_of_drain(dsn: str, opts: Options) -> str:
    """Top statements (by total time) of one 1-worker drain."""
    execute(dsn, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    prepare_queue(dsn, opts.runs)
    execute(dsn, "SELECT pg_stat_statements_reset()")
    drain = drain_once_prepared(dsn, opts)
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT calls, rows, total_exec_time, mean_exec_time, "
            "regexp_replace(left(query, 2000), '\\s+', ' ', 'g') FROM pg_stat_statements "
            "WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) "
            "ORDER BY total_exec_time DESC LIMIT 8").fetchall()
    lines = [f"pg_stat_statements of one 1-worker drain of {opts.runs:,} runs "
             f"({drain.rate:,.0f} jobs/s, {drain.wall:.2f} s wall):"]
    for calls, nrows, total, mean, text in rows:
        label = statement_label(str(text))
        lines.append(f"  {total:9.1f} ms total  {calls:7,} calls  {mean:7.3f} ms/call  {nrows:8,} rows  {label}")
    return "\n".join(lines)


def drain_once_prepared(dsn: str, opts: Options) -> Drain:
    """A 1-worker drain of the queue as it is (already prepared)."""
    start = time.perf_counter()
    with workers(dsn, 1, opts.concurrency, burst=True) as procs:
        procs[0].wait(timeout=600)
    _, rate = timestamp_rate(dsn)
    return Drain(rate=rate, wall=time.perf_counter() - start, worker_cpu=0.0, machine_cpu=0.0)


def statement_label(text: str) -> str:
    known = {"pgqueue.ready r USING picked": "claim", "FROM outcome o": "complete (batch)",
             "heartbeat_at = now() WHERE id": "heartbeat", "lease_expires_at < now()": "rescue",
             "expires_at < now()": "expire", "LISTEN": "listen", "pgqueue.workers (id": "register_worker"}
    for marker, name in known.items():
        if marker in text:
            return f"[{name}] {text[:70]}"
    return text[:90]


# -- running ------------------------------------------------------------------------------------


def measure_ceilings(dsn: str, opts: Options, results: Results) -> None:
    for clients in (1, 2):
        log(f"  ceiling: one-row pgbench, {clients} client(s)")
        results.one_row[clients].append(pgbench_ceiling(dsn, ONE_ROW_SCRIPT, clients, opts.seconds, 1,
                                                        one_row_prefill(opts.seconds)))
        log(f"  ceiling: batched pgbench, {clients} client(s)")
        results.batched[clients].append(pgbench_ceiling(dsn, BATCHED_SCRIPT, clients, opts.seconds, BATCH,
                                                        batched_prefill(opts.seconds)))


def measure_drains(dsn: str, opts: Options, results: Results) -> None:
    for processes in (1, 2):
        log(f"  drain: {opts.runs:,} runs, {processes} worker process(es)")
        drain = drain_once(dsn, processes, opts)
        log(f"    {drain.rate:,.0f} jobs/s, {drain.wall:.2f} s wall")
        results.drains[processes].append(drain)


def measure_backlogs(dsn: str, opts: Options, results: Results) -> None:
    # interleaved and repeated like the drains: one 1-second window per size is at the mercy of
    # whatever else runs on the machine (the median of --repeat rounds is reported)
    for i in range(opts.repeat):
        for backlog in (SMALL_BACKLOG, opts.backlog):
            log(f"  backlog {backlog:,} ({i + 1}/{opts.repeat}): pgqueue, 1 worker, {opts.backlog_drain:,} runs")
            drain = backlog_once(dsn, backlog, opts)
            log(f"    {drain.rate:,.0f} jobs/s, {drain.wall:.2f} s wall, machine busy {drain.machine_cpu:.2f} s")
            results.backlog.setdefault(backlog, []).append(drain)
    for backlog in (SMALL_BACKLOG, opts.backlog):
        log(f"  backlog {backlog:,}: ceiling, one-row pgbench -t {opts.backlog_drain:,}")
        results.backlog_ceiling[backlog] = backlog_ceiling(dsn, backlog, opts.backlog_drain)
    fill_bench_jobs(dsn, 0)
    reset_queue(dsn)


def run_benchmark(dsn: str, opts: Options) -> Results:
    execute(dsn, *BENCH_JOBS_DDL.split(";"))
    results = Results()
    if opts.only_backlog:
        log("backlog")
        measure_backlogs(dsn, opts, results)
        return results
    for i in range(opts.repeat):
        log(f"round {i + 1}/{opts.repeat}")
        measure_drains(dsn, opts, results)
        measure_ceilings(dsn, opts, results)
    log("latency")
    results.latency = latency_pgqueue(dsn, opts)
    results.latency_ceiling = latency_ceiling(dsn, opts)
    log("backlog")
    measure_backlogs(dsn, opts, results)
    if opts.statements:
        log("pg_stat_statements of a 1-worker drain")
        results.statements = statements_of_drain(dsn, opts)
    return results


# -- reporting ----------------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def drain_rows(results: Results) -> list[list[str]]:
    rows = []
    for processes, target in ((1, DRAIN_TARGET_1), (2, DRAIN_TARGET_2)):
        rate = median([d.rate for d in results.drains[processes]])
        for label, ceilings in (("naive one-row SQL loop", results.one_row), ("batched SQL", results.batched)):
            ceiling = median(ceilings[processes])
            rows.append([f"drain jobs/s, {processes} worker proc. (vs {label}, {processes} client)",
                         fmt_rate(rate), fmt_rate(ceiling), f"{rate / ceiling:.2f}",
                         f">= {target:,} jobs/s", verdict(rate >= target)])
    return rows


def latency_rows(results: Results, opts: Options) -> list[list[str]]:
    rows = []
    for name, ours, raw in zip(("p50", "p95", "p99"), results.latency, results.latency_ceiling, strict=True):
        target, met = (f"<= {LATENCY_P99_TARGET_MS:g} ms", verdict(ours <= LATENCY_P99_TARGET_MS)) \
            if name == "p99" else ("", "")
        rows.append([f"latency {name} ms at {opts.rate:g} runs/s (vs raw LISTEN + claim)", f"{ours:.2f}",
                     f"{raw:.2f}", f"{ours / raw:.2f}", target, met])
    return rows


def backlog_rows(results: Results, opts: Options) -> list[list[str]]:
    small = median([d.rate for d in results.backlog[SMALL_BACKLOG]])
    rows = []
    for backlog, drains in results.backlog.items():
        rate = median([d.rate for d in drains])
        ceiling = results.backlog_ceiling[backlog]
        target, met = ("", "") if backlog == SMALL_BACKLOG else \
            (f">= backlog {SMALL_BACKLOG:,} rate", verdict(rate >= small * 0.95))
        rows.append([f"backlog {backlog:,}: jobs/s over {opts.backlog_drain:,} runs, 1 worker (vs one-row SQL)",
                     fmt_rate(rate), fmt_rate(ceiling), f"{rate / ceiling:.2f}", target, met])
    return rows


def report(results: Results, opts: Options) -> str:
    header = ["metric", "pgqueue", "ceiling", "ratio", "target", "met"]
    if opts.only_backlog:
        return format_table(header, backlog_rows(results, opts))
    rows = [*drain_rows(results), *latency_rows(results, opts), *backlog_rows(results, opts)]
    return format_table(header, rows)


def drain_details(results: Results, opts: Options) -> str:
    lines = ["drain details (per repeat): jobs/s by timestamps | wall s | worker CPU s | machine busy CPU s"]
    for processes, drains in results.drains.items():
        for d in drains:
            lines.append(f"  {processes} proc: {d.rate:8,.0f} | wall {d.wall:5.2f} s ({opts.runs / d.wall:7,.0f} "
                         f"jobs/s incl. start-up) | worker CPU {d.worker_cpu:5.2f} s | machine busy "
                         f"{d.machine_cpu:5.2f} s (≈ Postgres + rest: {d.machine_cpu - d.worker_cpu:5.2f} s)")
    for backlog, drains in results.backlog.items():
        for d in drains:
            lines.append(f"  backlog {backlog:>9,}: {d.rate:8,.0f} | wall {d.wall:5.2f} s | "
                         f"worker CPU {d.worker_cpu:5.2f} s | machine busy {d.machine_cpu:5.2f} s")
    for name, values in (("one-row", results.one_row), ("batched", results.batched)):
        for clients, rates in values.items():
            if not rates:
                continue
            lines.append(f"  ceiling {name}, {clients} client(s): " + ", ".join(fmt_rate(r) for r in rates))
    return "\n".join(lines)


def print_header(server: BenchServer, opts: Options) -> None:
    print_server_header(server)
    print(f"parameters: runs={opts.runs:,}, concurrency={opts.concurrency}, repeat={opts.repeat} (median), "
          f"pgbench seconds={opts.seconds}, rate={opts.rate:g}/s for {opts.latency_seconds:g} s, "
          f"backlog={SMALL_BACKLOG:,} vs {opts.backlog:,} (drain {opts.backlog_drain:,})")


def print_results(results: Results, opts: Options) -> None:
    print()
    print(report(results, opts))
    print()
    print("ratio = pgqueue / ceiling (throughput: higher is better; latency: lower is better).")
    print("ceilings: bench_jobs, a plain table with a partial index on queued ids; claim and complete")
    print(f"are separate transactions; batched claims {BATCH} rows per statement and completes them in one.")
    print()
    print(drain_details(results, opts))
    if results.statements:
        print()
        print(results.statements)


# -- command line -------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> tuple[Options, str | None]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--dsn", help="existing server to use (default: PGQUEUE_BENCH_DSN, else a throwaway one)")
    parser.add_argument("--runs", type=int, default=20_000, help="runs per drain")
    parser.add_argument("--concurrency", type=int, default=100, help="worker --concurrency")
    parser.add_argument("--repeat", type=int, default=3, help="repeats of drains and ceilings (median reported)")
    parser.add_argument("--seconds", type=int, default=5, help="duration of each pgbench ceiling")
    parser.add_argument("--rate", type=float, default=50.0, help="runs/s of the latency producer")
    parser.add_argument("--latency-seconds", type=float, default=10.0, help="duration of the latency producer")
    parser.add_argument("--backlog", type=int, default=1_000_000, help="large backlog (queued runs)")
    parser.add_argument("--backlog-drain", type=int, default=10_000, help="runs drained in the backlog test")
    parser.add_argument("--statements", action="store_true",
                        help="throwaway server only: preload pg_stat_statements, print a drain's statements")
    parser.add_argument("--only-backlog", action="store_true", help="run only the backlog part")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 1 repeat, 5,000 runs, 2 s pgbench, 3 s latency, 100,000 backlog")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeat, args.runs, args.seconds, args.latency_seconds = 1, 5_000, 2, 3.0
        args.backlog = 100_000
    opts = Options(runs=args.runs, concurrency=args.concurrency, repeat=args.repeat, seconds=args.seconds,
                   rate=args.rate, latency_seconds=args.latency_seconds, backlog=args.backlog,
                   backlog_drain=args.backlog_drain, statements=args.statements,
                   only_backlog=args.only_backlog)
    return opts, args.dsn


def main(argv: Sequence[str] | None = None) -> None:
    opts, dsn = parse_args(argv)
    with bench_server(dsn) as server:
        if opts.statements:
            enable_statements(server)
        print_header(server, opts)
        with fresh_database(server, "pgqueue_bench_worker") as db:
            results = run_benchmark(db, opts)
        print_results(results, opts)


if __name__ == "__main__":
    main()
