"""Cost of durable execution in pgqueue: checkpointed steps and a large fan-out, with real workers.

What it measures (run timings come from the runs' own timestamps, i.e. the database clock):

- steps: --runs runs of a plain no-op async task, then --runs runs of an async task doing three
  checkpointed steps (`await ctx.step("a", f, n)`, "b", "c" with trivial module-level step
  functions) are each drained by one real `pgqueue worker durable_bench_app:app --burst
  --concurrency C` process. jobs/s = runs / (max(finished_at) - min(started_at)), as in
  benchmarks/worker.py. Reported: the ratio durable/plain, the cost per step in microseconds,
  ((1/durable - 1/plain) / 3), and, on the throwaway server, round trips per step counted with
  pg_stat_statements (top-level statements of the drain, durable minus plain, per run / 3).
- fan-out: one parent run spawns --children no-op children (ctx.spawn in chunks of 1,000) and
  gathers them, drained by one worker process at --concurrency; time from the parent's
  started_at to its finished_at, and children/s over that span.

Each is repeated --repeat times; medians are reported. The server is a throwaway embedded
PostgreSQL (removed at the end; started with pg_stat_statements preloaded unless
--no-statements) unless --dsn or PGQUEUE_BENCH_DSN names one; either way the benchmark runs in
a fresh, migrated database.

    .venv/bin/python benchmarks/durable.py            # full run: 3 repeats, 10,000 runs, 10,000 children
    .venv/bin/python benchmarks/durable.py --quick    # smoke run: 1 repeat, 2,000 runs, 2,000 children
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import BenchServer, bench_server, fmt_rate, format_table, fresh_database, log, median, print_server_header
from worker import (
    children_cpu_seconds,
    enable_statements,
    execute,
    fetch_one,
    machine_busy_seconds,
    settle,
    statement_label,
    wait_until,
    worker_env,
)

APP_PATH = "durable_bench_app:app"
PLAIN_TASK = "plain"
DURABLE_TASK = "three_steps"
PARENT_TASK = "parent"
CHILD_TASK = "child"
STEPS_PER_RUN = 3
SPAWN_CHUNK = 1_000
ENQUEUE_CHUNK = 50_000
RATIO_TARGET = 0.33  # durable jobs/s over plain jobs/s
ROUND_TRIPS_PER_STEP_TARGET = 1.0
TABLES = ("pgqueue.runs, pgqueue.ready, pgqueue.attempts, pgqueue.workers, pgqueue.steps, "
          "pgqueue.event_waits")
# SETTLE_NOTE: ANALYZE of the emptied pgqueue.steps would record it as known-empty; the generic plan
# psycopg's prepared load_steps then caches is a seq scan, run on every history load as the table grows.
# the alias that marks the benchmark's own statements during a measurement, left out of the counts
OWN = "durable_bench"


@dataclass(frozen=True)
class Options:
    runs: int
    children: int
    concurrency: int
    repeat: int
    statements: bool


@dataclass(frozen=True)
class StatementStat:
    label: str
    calls: int
    total_ms: float


@dataclass(frozen=True)
class Drain:
    """One drain of one task: rate by timestamps, wall time, CPU spent meanwhile, statements run."""

    rate: float
    wall: float
    worker_cpu: float
    machine_cpu: float
    statements: list[StatementStat] = field(default_factory=list)

    @property
    def calls(self) -> int:
        return sum(s.calls for s in self.statements)


@dataclass(frozen=True)
class FanOut:
    """One fan-out: the parent's span, and its parts (spawning, children, the gathering attempt)."""

    seconds: float
    spawn_seconds: float
    children_seconds: float
    wake_seconds: float
    gather_seconds: float
    wall: float
    statements: list[StatementStat] = field(default_factory=list)


@dataclass
class Results:
    plain: list[Drain] = field(default_factory=list)
    durable: list[Drain] = field(default_factory=list)
    fan_outs: list[FanOut] = field(default_factory=list)


# -- queue ----------------------------------------------------------------------------------------


def reset(dsn: str) -> None:
    execute(dsn, f"TRUNCATE {TABLES}")


def enqueue_runs(dsn: str, task: str, count: int) -> None:
    """`count` due runs of `task` with input {"n": i}, through the SQL API."""
    statement = ("SELECT count(*) FROM pgqueue.enqueue_many(%s, ARRAY(SELECT jsonb_build_object('n', g) "
                 "FROM generate_series(%s::int, %s::int) AS g), queue => 'default')")
    with psycopg.connect(dsn, autocommit=True) as conn:
        for start in range(0, count, ENQUEUE_CHUNK):
            conn.execute(statement, (task, start + 1, min(count, start + ENQUEUE_CHUNK)))


def reset_statements(dsn: str, opts: Options) -> None:
    if opts.statements:
        execute(dsn, f"SELECT pg_stat_statements_reset() AS {OWN}")


def read_statements(dsn: str, opts: Options) -> list[StatementStat]:
    """Top-level statements (one round trip each) run in this database since the reset, busiest first."""
    if not opts.statements:
        return []
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT calls, total_exec_time, regexp_replace(left(query, 2000), '\\s+', ' ', 'g') "
            "FROM pg_stat_statements WHERE toplevel AND query NOT LIKE %s "
            "AND dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) "
            "ORDER BY calls DESC", (f"%{OWN}%",)).fetchall()
    return [StatementStat(label(str(text)), int(calls), float(total)) for calls, total, text in rows]


DURABLE_LABELS = {
    "FROM pgqueue.steps WHERE run_id": "load_steps", "INSERT INTO pgqueue.steps AS s": "record_step",
    "SET children_total = children_total +": "add_children", "SELECT children_pending FROM": "pending_children",
    "WITH ORDINALITY AS want": "children_outcomes", "WITH suspended AS": "suspend",
}


def label(text: str) -> str:
    for marker, name in DURABLE_LABELS.items():
        if marker in text:
            return f"[{name}] {text[:60]}"
    return statement_label(text)


# -- worker processes -------------------------------------------------------------------------------


def worker_argv(concurrency: int, burst: bool) -> list[str]:
    argv = [sys.executable, "-m", "pgqueue_cli", "worker", APP_PATH, "--concurrency", str(concurrency),
            "--log-level", "WARNING"]
    return [*argv, "--burst"] if burst else argv


@contextlib.contextmanager
def worker(dsn: str, concurrency: int, *, burst: bool) -> Iterator[subprocess.Popen[bytes]]:
    """One `pgqueue worker` process; SIGTERMed (if still running) and checked at the end of the block."""
    with tempfile.TemporaryDirectory(prefix="pgqueue-bench-durable-") as folder:
        path = Path(folder) / "worker.log"
        with path.open("wb") as stderr:
            proc = subprocess.Popen(worker_argv(concurrency, burst), env=worker_env(dsn), stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=stderr)
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            if proc.wait(timeout=120) != 0:
                raise RuntimeError(f"worker exited with {proc.returncode}:\n{path.read_text()[-3000:]}")


# -- steps: plain vs 3-step durable drains ----------------------------------------------------------


def drain(dsn: str, task: str, opts: Options) -> Drain:
    """Enqueue --runs runs of `task`; one burst worker drains them."""
    reset(dsn)
    enqueue_runs(dsn, task, opts.runs)
    settle(dsn, "pgqueue.runs, pgqueue.ready")  # not the empty steps table: see SETTLE_NOTE
    reset_statements(dsn, opts)
    cpu0, busy0, start = children_cpu_seconds(), machine_busy_seconds(), time.perf_counter()
    with worker(dsn, opts.concurrency, burst=True) as proc:
        proc.wait(timeout=1800)
    wall = time.perf_counter() - start
    cpu, busy = children_cpu_seconds() - cpu0, machine_busy_seconds() - busy0
    statements = read_statements(dsn, opts)
    done, span = fetch_one(dsn, "SELECT count(*) FILTER (WHERE status = 'succeeded'), "
                                "extract(epoch FROM max(finished_at) - min(started_at))::float8 "
                                "FROM pgqueue.runs WHERE task = %s", (task,))
    if int(done) != opts.runs:
        raise RuntimeError(f"{task}: drain finished with {done} of {opts.runs} runs succeeded")
    if task == DURABLE_TASK:
        steps = int(fetch_one(dsn, "SELECT count(*) FROM pgqueue.steps WHERE status = 'succeeded'")[0])
        if steps != STEPS_PER_RUN * opts.runs:
            raise RuntimeError(f"expected {STEPS_PER_RUN * opts.runs} recorded steps, found {steps}")
    return Drain(rate=int(done) / float(span), wall=wall, worker_cpu=cpu, machine_cpu=busy, statements=statements)


# -- fan-out ------------------------------------------------------------------------------------------


def parent_status(dsn: str, run_id: int) -> str:
    return str(fetch_one(dsn, f"SELECT status AS {OWN} FROM pgqueue.runs WHERE id = %s", (run_id,))[0])


def fan_out(dsn: str, opts: Options) -> FanOut:
    """One parent spawning --children children in chunks of SPAWN_CHUNK and gathering them."""
    reset(dsn)
    enqueue = "SELECT pgqueue.enqueue(%s, jsonb_build_object('n', %s::int, 'chunk', %s::int), queue => 'default')"
    parent_id = int(fetch_one(dsn, enqueue, (PARENT_TASK, opts.children, SPAWN_CHUNK))[0])
    settle(dsn, "pgqueue.runs, pgqueue.ready")  # not the empty steps table: see SETTLE_NOTE
    reset_statements(dsn, opts)
    start = time.perf_counter()
    with worker(dsn, opts.concurrency, burst=False):
        wait_until(lambda: parent_status(dsn, parent_id) in ("succeeded", "failed", "dead", "cancelled"),
                   1800, "the parent to finish", interval=0.05)
    wall = time.perf_counter() - start
    statements = read_statements(dsn, opts)
    status, result, children_ok = fetch_one(
        dsn, "SELECT status, result, (SELECT count(*) FROM pgqueue.runs WHERE parent_id = p.id "
        "AND status = 'succeeded') FROM pgqueue.runs p WHERE id = %s", (parent_id,))
    if status != "succeeded" or int(children_ok) != opts.children or result != opts.children:
        raise RuntimeError(f"fan-out: parent {status} with result {result!r}, "
                           f"{children_ok} of {opts.children} children succeeded")
    spans = fetch_one(dsn, """
        SELECT extract(epoch FROM p.finished_at - p.started_at)::float8,
               extract(epoch FROM a1.finished_at - a1.started_at)::float8,
               extract(epoch FROM c.last_finish - c.first_start)::float8,
               extract(epoch FROM a2.started_at - c.last_finish)::float8,
               extract(epoch FROM p.finished_at - a2.started_at)::float8
          FROM pgqueue.runs p
          JOIN pgqueue.attempts a1 ON a1.run_id = p.id AND a1.attempt = 1
          JOIN pgqueue.attempts a2 ON a2.run_id = p.id AND a2.attempt = p.attempt,
               LATERAL (SELECT min(started_at) AS first_start, max(finished_at) AS last_finish
                          FROM pgqueue.runs WHERE parent_id = p.id) c
         WHERE p.id = %s""", (parent_id,))
    total, spawn, kids, wake, gather = (float(v) for v in spans)
    return FanOut(seconds=total, spawn_seconds=spawn, children_seconds=kids, wake_seconds=wake,
                  gather_seconds=gather, wall=wall, statements=statements)


# -- running ------------------------------------------------------------------------------------------


def run_benchmark(dsn: str, opts: Options) -> Results:
    results = Results()
    for i in range(opts.repeat):
        log(f"round {i + 1}/{opts.repeat}")
        for task, drains in ((PLAIN_TASK, results.plain), (DURABLE_TASK, results.durable)):
            log(f"  drain: {opts.runs:,} runs of {task}, 1 worker process")
            d = drain(dsn, task, opts)
            log(f"    {d.rate:,.0f} jobs/s, {d.wall:.2f} s wall, {d.calls:,} statements")
            drains.append(d)
        log(f"  fan-out: 1 parent, {opts.children:,} children")
        f = fan_out(dsn, opts)
        log(f"    {f.seconds:.2f} s parent start to finish ({opts.children / f.seconds:,.0f} children/s)")
        results.fan_outs.append(f)
    reset(dsn)
    return results


# -- reporting ----------------------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def calls_of(drain: Drain, name: str) -> int:
    return sum(s.calls for s in drain.statements if s.label.startswith(f"[{name}]"))


def report(results: Results, opts: Options) -> str:
    plain = median([d.rate for d in results.plain])
    durable = median([d.rate for d in results.durable])
    ratio = durable / plain
    us_per_step = (1 / durable - 1 / plain) / STEPS_PER_RUN * 1e6
    rows = [
        [f"plain no-op task: jobs/s, 1 worker proc., {opts.runs:,} runs", fmt_rate(plain), "", ""],
        [f"3-step durable task: jobs/s, 1 worker proc., {opts.runs:,} runs", fmt_rate(durable), "", ""],
        ["ratio durable / plain", f"{ratio:.2f}", f">= {RATIO_TARGET:.2f}", verdict(ratio >= RATIO_TARGET)],
        ["cost per step, µs ((1/durable - 1/plain) / 3)", f"{us_per_step:,.0f}", "", ""],
    ]
    if opts.statements:
        per_run = median([(d.calls - p.calls) / opts.runs for d, p in zip(results.durable, results.plain,
                                                                          strict=True)])
        loads = median([calls_of(d, "load_steps") / opts.runs for d in results.durable])
        records = median([calls_of(d, "record_step") / opts.runs for d in results.durable])
        per_step = per_run / STEPS_PER_RUN
        rows += [
            ["round trips per step (extra per durable run vs plain / 3)", f"{per_step:.2f}",
             f"<= {ROUND_TRIPS_PER_STEP_TARGET:.2f}", verdict(per_step <= ROUND_TRIPS_PER_STEP_TARGET + 0.005)],
            ["  of which record_step per step", f"{records / STEPS_PER_RUN:.2f}", "", ""],
            ["  of which load_steps (history) per run", f"{loads:.2f}", "", ""],
            ["extra round trips per durable run vs plain", f"{per_run:.2f}", "", ""],
        ]
    seconds = median([f.seconds for f in results.fan_outs])
    rows += [
        [f"fan-out {opts.children:,} children: parent start to finish, s", f"{seconds:.2f}", "", ""],
        [f"fan-out {opts.children:,} children: children/s", fmt_rate(opts.children / seconds), "", ""],
    ]
    return format_table(["metric", "value", "target", "met"], rows)


def statements_table(title: str, statements: Sequence[StatementStat], per: int, unit: str) -> str:
    lines = [title]
    for s in statements[:10]:
        lines.append(f"  {s.calls:8,} calls  {s.calls / per:8.3f}/{unit}  {s.total_ms:9.1f} ms total  {s.label}")
    return "\n".join(lines)


def details(results: Results, opts: Options) -> str:
    lines = ["per repeat: jobs/s by timestamps | wall s (incl. start-up) | worker CPU s | machine busy CPU s"]
    for name, drains in ((PLAIN_TASK, results.plain), (DURABLE_TASK, results.durable)):
        for d in drains:
            lines.append(f"  {name:11} {d.rate:8,.0f} | wall {d.wall:6.2f} s | worker CPU {d.worker_cpu:6.2f} s "
                         f"({d.worker_cpu / opts.runs * 1e6:5.0f} µs/run) | machine busy {d.machine_cpu:6.2f} s "
                         f"(≈ Postgres + rest: {d.machine_cpu - d.worker_cpu:6.2f} s)"
                         + (f" | {d.calls:,} statements ({d.calls / opts.runs:.2f}/run)" if d.statements else ""))
    lines.append("fan-out per repeat: parent start->finish s = spawning attempt | children first start->last "
                 "finish | wake-up wait | gathering attempt (parts overlap: children start while spawning)")
    for f in results.fan_outs:
        lines.append(f"  {f.seconds:6.2f} s ({opts.children / f.seconds:7,.0f} children/s): spawn attempt "
                     f"{f.spawn_seconds:5.2f} s | children {f.children_seconds:5.2f} s | wake-up "
                     f"{f.wake_seconds:5.3f} s | gather attempt {f.gather_seconds:5.3f} s | wall {f.wall:5.2f} s")
    if opts.statements and results.durable:
        lines.append("")
        lines.append(statements_table(f"top-level statements of the last {DURABLE_TASK} drain ({opts.runs:,} runs):",
                                      results.durable[-1].statements, opts.runs, "run"))
        lines.append(statements_table(f"top-level statements of the last {PLAIN_TASK} drain ({opts.runs:,} runs):",
                                      results.plain[-1].statements, opts.runs, "run"))
        lines.append(statements_table(f"top-level statements of the last fan-out ({opts.children:,} children):",
                                      results.fan_outs[-1].statements, opts.children, "child"))
    return "\n".join(lines)


def print_header(server: BenchServer, opts: Options) -> None:
    print_server_header(server)
    print(f"parameters: runs={opts.runs:,}, children={opts.children:,} (spawned {SPAWN_CHUNK:,} per call), "
          f"1 worker process, concurrency={opts.concurrency}, repeat={opts.repeat} (median), "
          f"statements={'pg_stat_statements' if opts.statements else 'off'}")


# -- command line -------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> tuple[Options, str | None]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--dsn", help="existing server to use (default: PGQUEUE_BENCH_DSN, else a throwaway one)")
    parser.add_argument("--runs", type=int, default=10_000, help="runs per drain (plain and durable)")
    parser.add_argument("--children", type=int, default=10_000, help="children of the fan-out parent")
    parser.add_argument("--concurrency", type=int, default=100, help="worker --concurrency")
    parser.add_argument("--repeat", type=int, default=3, help="repeats of every measurement (median reported)")
    parser.add_argument("--no-statements", action="store_true",
                        help="do not preload pg_stat_statements (no round-trip counts)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 repeat, 2,000 runs, 2,000 children")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeat, args.runs, args.children = 1, 2_000, 2_000
    opts = Options(runs=args.runs, children=args.children, concurrency=args.concurrency, repeat=args.repeat,
                   statements=not args.no_statements)
    return opts, args.dsn


def main(argv: Sequence[str] | None = None) -> None:
    opts, dsn = parse_args(argv)
    with bench_server(dsn) as server:
        if opts.statements and server.embedded is None:
            log("a server given by DSN: pg_stat_statements is not preloaded here, so no round-trip counts")
            opts = Options(opts.runs, opts.children, opts.concurrency, opts.repeat, statements=False)
        if opts.statements:
            enable_statements(server)
        print_header(server, opts)
        with fresh_database(server, "pgqueue_bench_durable") as db:
            if opts.statements:
                execute(db, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            started = time.perf_counter()
            results = run_benchmark(db, opts)
            log(f"done in {time.perf_counter() - started:.0f} s")
        print()
        print(report(results, opts))
        print()
        print(f"ratio target >= {RATIO_TARGET}; round trips counted as top-level statements in pg_stat_statements "
              "(the benchmark's own left out); µs per step from the median rates.")
        print()
        print(details(results, opts))


if __name__ == "__main__":
    main()
