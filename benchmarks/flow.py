"""Flow control's cost: drains with per-tenant concurrency limits, and claim cost vs distinct keys.

What it measures (drain rates come from the runs' own timestamps, i.e. the database clock, as in
benchmarks/worker.py, whose worker processes, drain and pgbench ceilings this reuses):

- limited vs unlimited: --runs runs spread round-robin over --tenants tenants are enqueued in
  bulk (pgqueue.enqueue_many, concurrency keys given), then real `pgqueue worker bench_app:app
  --burst --concurrency C` processes drain them. Task `limited_noop` allows 5 running runs per
  tenant (Concurrency(key="tenant", max_running=5)); task `tenant_noop` takes the same input
  without a key. jobs/s = runs / (max(finished_at) - min(started_at)); ratio = limited /
  unlimited (target >= 0.70). 1 worker process (--two-processes adds 2). The limit is checked
  afterwards: the most runs of one tenant running at once, from started_at/finished_at (the
  claim and completion transactions' clocks, so an overlap of a few ms between a completion
  and the next claim of its key can show as one more).
- claim cost vs distinct keys: --backlog queued runs of task `keyed_noop` (limit 100,000 per
  key: keyed, locked and counted like a limited task, but no key is ever saturated, so both
  backlogs can fill every claim) spread over 10 keys, then over 10,000 keys:
  (a) the median time of one `SELECT * FROM pgqueue.claim(worker, '{default}', 100, 60)` called
  directly --claims times, each rolled back, so every call sees the same backlog (a rollback
  leaves the `ready` rows in place and only dead row versions in `runs`);
  (b) the buffers of the claim's candidate scan, from EXPLAIN (ANALYZE, BUFFERS) of the
  statements inside the function (auto_explain with log_nested_statements, sent to this
  client as NOTICEs: needs a superuser, as on the throwaway server);
  (c) drain jobs/s of the whole backlog by 1 worker process.
- a full key's backlog: --backlog (then a tenth of it) queued runs of `limited_noop` for one
  tenant, 5 of them claimed and left running (the key is full): the median time of a direct
  claim that finds nothing, which must not grow with the backlog behind the full key.
- ceilings for context: benchmarks/worker.py's pgbench claim loops on a plain table (naive
  one-row claim + complete, and 100 rows per statement), 1 client, --seconds each.

The server is a throwaway embedded PostgreSQL (removed at the end) unless --dsn or
PGQUEUE_BENCH_DSN names one; either way the benchmark runs in a fresh, migrated database.

    .venv/bin/python benchmarks/flow.py            # full run: 3 repeats, 20,000 runs, 100,000 backlog
    .venv/bin/python benchmarks/flow.py --quick    # smoke run: 1 repeat, 5,000 runs, 20,000 backlog
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))

import worker as wb
from _common import BenchServer, bench_server, fmt_rate, format_table, fresh_database, log, median, print_server_header
from bench_app import TENANT_LIMIT, app

LIMITED, UNLIMITED, KEYED = "limited_noop", "tenant_noop", "keyed_noop"
RATIO_TARGET = 0.70
CLAIM_BATCH = 100
KEY_COUNTS = (10, 10_000)  # 0 below: the same backlog of `tenant_noop`, without keys (the plain claim)
KEY_GROWTH_TOLERANCE = 1.25  # claim time at 10,000 keys within 25% of 10 keys
CANDIDATE_SCAN_MARK = "SELECT array_agg(c) "  # the statement of pgqueue.claim that picks candidates (INTO is cut)
CLAIM_CALL = "SELECT * FROM pgqueue.claim("


@dataclass(frozen=True)
class Options:
    runs: int
    tenants: int
    concurrency: int
    repeat: int
    processes: tuple[int, ...]
    backlog: int
    claims: int
    seconds: int


@dataclass
class ClaimCost:
    keys: int
    times_ms: list[float] = field(default_factory=list)
    claimed: int = 0
    scans: list[dict[str, Any]] = field(default_factory=list)  # per repeat: buffers of the candidate scan
    drains: list[float] = field(default_factory=list)


@dataclass
class Results:
    drains: dict[tuple[str, int], list[float]] = field(default_factory=dict)
    overlap: list[int] = field(default_factory=list)
    claim_costs: dict[int, ClaimCost] = field(default_factory=dict)
    one_row: list[float] = field(default_factory=list)
    batched: list[float] = field(default_factory=list)
    saturated: dict[int, list[float]] = field(default_factory=dict)  # backlog -> ms per empty claim


# -- enqueueing ---------------------------------------------------------------------------------


def register_tasks(dsn: str) -> None:
    """What a worker writes at start (task defaults, limits); the direct claims rely on the limits."""
    os.environ["PGQUEUE_DSN"] = dsn
    try:
        app.register_tasks()
    finally:
        app.close()


def enqueue_keyed(dsn: str, task: str, count: int, keys: int, *, with_keys: bool) -> None:
    """`count` due runs of `task`, run n for tenant 't<n mod keys>', in bulk via pgqueue.enqueue_many;
    the concurrency keys are passed (as the Python client does) unless `with_keys` is false."""
    inputs = ("ARRAY(SELECT jsonb_build_object('tenant', 't' || (g %% %(keys)s), 'n', g) "
              "FROM generate_series(%(lo)s::int, %(hi)s::int) AS g)")
    concurrency_keys = ("ARRAY(SELECT 't' || (g %% %(keys)s) FROM generate_series(%(lo)s::int, %(hi)s::int) AS g)"
                        if with_keys else "NULL")
    statement = (f"SELECT count(*) FROM pgqueue.enqueue_many(%(task)s, {inputs}, "
                 f"concurrency_keys => {concurrency_keys})")
    with psycopg.connect(dsn, autocommit=True) as conn:
        for start in range(0, count, wb.ENQUEUE_CHUNK):
            end = min(count, start + wb.ENQUEUE_CHUNK)
            conn.execute(statement, {"task": task, "keys": keys, "lo": start, "hi": end - 1})  # type: ignore[arg-type]


def prepare(dsn: str, task: str, count: int, keys: int, *, with_keys: bool) -> None:
    wb.reset_queue(dsn)
    enqueue_keyed(dsn, task, count, keys, with_keys=with_keys)
    wb.settle(dsn, "pgqueue.runs, pgqueue.ready")


def drain(dsn: str, processes: int, concurrency: int, expected: int) -> float:
    with wb.workers(dsn, processes, concurrency, burst=True) as procs:
        for proc in procs:
            proc.wait(timeout=1200)
    done, rate = wb.timestamp_rate(dsn)
    if done != expected:
        raise RuntimeError(f"drain finished with {done} of {expected} runs succeeded")
    return rate


def max_overlap_per_key(dsn: str) -> int:
    """The most runs of one key running at once, from the runs' start and finish timestamps."""
    return int(wb.fetch_one(dsn, """
        SELECT coalesce(max(running), 0) FROM (
            SELECT sum(delta) OVER (PARTITION BY key ORDER BY at, delta) AS running
              FROM (SELECT concurrency_key AS key, started_at AS at, 1 AS delta FROM pgqueue.runs
                    UNION ALL
                    SELECT concurrency_key, finished_at, -1 FROM pgqueue.runs) e) s""")[0])


# -- limited vs unlimited -----------------------------------------------------------------------


def measure_limited(dsn: str, opts: Options, results: Results) -> None:
    for processes in opts.processes:
        for task, keyed in ((UNLIMITED, False), (LIMITED, True)):
            prepare(dsn, task, opts.runs, opts.tenants, with_keys=keyed)
            log(f"  drain: {opts.runs:,} runs of {task} ({opts.tenants:,} tenants), {processes} worker process(es)")
            rate = drain(dsn, processes, opts.concurrency, opts.runs)
            log(f"    {rate:,.0f} jobs/s")
            results.drains.setdefault((task, processes), []).append(rate)
            if keyed:
                results.overlap.append(max_overlap_per_key(dsn))


# -- claim cost vs distinct keys ----------------------------------------------------------------


def time_claims(dsn: str, count: int) -> tuple[list[float], int]:
    """ms per direct pgqueue.claim of CLAIM_BATCH runs, each rolled back; and the runs one claim got."""
    worker_id = uuid.uuid4()
    times: list[float] = []
    claimed = 0
    with psycopg.connect(dsn) as conn:
        for i in range(count + 3):  # the first calls plan the function's statements
            start = time.perf_counter()
            rows = conn.execute("SELECT * FROM pgqueue.claim(%s, '{default}', %s, 60)",
                                (worker_id, CLAIM_BATCH)).fetchall()
            elapsed = time.perf_counter() - start
            conn.rollback()
            claimed = len(rows)
            if i >= 3:
                times.append(elapsed * 1000)
    return times, claimed


def candidate_scan_buffers(dsn: str) -> dict[str, Any]:
    """EXPLAIN (ANALYZE, BUFFERS) of the candidate scan inside one (rolled back) claim, and of the whole call."""
    plans: dict[str, dict[str, Any]] = {}

    def keep(diag: psycopg.errors.Diagnostic) -> None:
        text = diag.message_primary or ""
        if "plan:" not in text:
            return
        plan = json.loads(text.split("plan:", 1)[1])
        for name, mark in (("scan", CANDIDATE_SCAN_MARK), ("claim", CLAIM_CALL)):
            if str(plan.get("Query Text", "")).lstrip().startswith(mark):
                plans[name] = plan["Plan"]

    with psycopg.connect(dsn) as conn:
        conn.add_notice_handler(keep)
        for setting in ("auto_explain.log_min_duration = 0", "auto_explain.log_analyze = on",
                        "auto_explain.log_buffers = on", "auto_explain.log_nested_statements = on",
                        "auto_explain.log_timing = off", "auto_explain.log_format = json",
                        "auto_explain.log_level = notice"):
            conn.execute(f"SET {setting}")  # type: ignore[arg-type]
        conn.execute("LOAD 'auto_explain'")
        conn.execute(CLAIM_CALL + "%s, '{default}', %s, 60)", (uuid.uuid4(), CLAIM_BATCH)).fetchall()
        conn.rollback()
    if "scan" not in plans or "claim" not in plans:
        return {}
    scan, claim = plans["scan"], plans["claim"]
    return {"shared hit": scan.get("Shared Hit Blocks", 0), "shared read": scan.get("Shared Read Blocks", 0),
            "ready rows read": ready_rows_read(scan),
            "claim hit": claim.get("Shared Hit Blocks", 0) + claim.get("Shared Read Blocks", 0)}


def ready_rows_read(node: dict[str, Any]) -> int:
    """Rows the scans of pgqueue.ready returned, plus those their filters removed."""
    total = 0
    if node.get("Relation Name") == "ready":
        loops = int(node.get("Actual Loops", 1))
        total += int(node.get("Actual Rows", 0)) * loops + int(node.get("Rows Removed by Filter", 0))
    return total + sum(ready_rows_read(child) for child in node.get("Plans", []))


def measure_claim_cost(dsn: str, opts: Options, results: Results, repeat: int) -> None:
    for keys in (0, *KEY_COUNTS):
        cost = results.claim_costs.setdefault(keys, ClaimCost(keys))
        prepare(dsn, KEYED if keys else UNLIMITED, opts.backlog, keys or 1, with_keys=bool(keys))
        log(f"  claim cost: {opts.backlog:,} queued runs over {keys:,} keys, {opts.claims} direct claims")
        times, cost.claimed = time_claims(dsn, opts.claims)
        cost.times_ms += times
        log(f"    median {median(times):.2f} ms per claim of {cost.claimed} runs")
        try:
            cost.scans.append(candidate_scan_buffers(dsn))
        except psycopg.Error as exc:  # not a superuser, or no auto_explain on this server
            log(f"    no EXPLAIN of the candidate scan: {exc}")
        if repeat == 0 or opts.repeat > 1:
            log(f"  drain: {opts.backlog:,} runs over {keys:,} keys, 1 worker process")
            cost.drains.append(drain(dsn, 1, opts.concurrency, opts.backlog))
            log(f"    {cost.drains[-1]:,.0f} jobs/s")


def measure_saturated(dsn: str, opts: Options, results: Results) -> None:
    for backlog in (opts.backlog // 10, opts.backlog):
        prepare(dsn, LIMITED, backlog, 1, with_keys=True)
        with psycopg.connect(dsn, autocommit=True) as conn:  # fill the key: TENANT_LIMIT runs left running
            conn.execute("SELECT count(*) FROM pgqueue.claim(%s, '{default}', %s, 600)", (uuid.uuid4(), CLAIM_BATCH))
        log(f"  full key: {backlog:,} queued behind it, {opts.claims} direct claims")
        times, claimed = time_claims(dsn, opts.claims)
        assert claimed == 0, f"a claim took {claimed} runs of a full key"
        results.saturated.setdefault(backlog, []).extend(times)
        log(f"    median {median(times):.2f} ms per (empty) claim")


# -- ceilings -----------------------------------------------------------------------------------


def measure_ceilings(dsn: str, opts: Options, results: Results) -> None:
    log(f"  ceilings: pgbench one-row and batched claim loops, 1 client, {opts.seconds} s")
    results.one_row.append(wb.pgbench_ceiling(dsn, wb.ONE_ROW_SCRIPT, 1, opts.seconds, 1,
                                              wb.one_row_prefill(opts.seconds)))
    results.batched.append(wb.pgbench_ceiling(dsn, wb.BATCHED_SCRIPT, 1, opts.seconds, wb.BATCH,
                                              wb.batched_prefill(opts.seconds)))
    wb.fill_bench_jobs(dsn, 0)


def run_benchmark(dsn: str, opts: Options) -> Results:
    wb.execute(dsn, *wb.BENCH_JOBS_DDL.split(";"))
    register_tasks(dsn)
    results = Results()
    for i in range(opts.repeat):
        log(f"round {i + 1}/{opts.repeat}")
        measure_limited(dsn, opts, results)
        measure_claim_cost(dsn, opts, results, i)
        measure_saturated(dsn, opts, results)
        measure_ceilings(dsn, opts, results)
    return results


# -- reporting ----------------------------------------------------------------------------------


def limited_rows(results: Results, opts: Options) -> list[list[str]]:
    rows = []
    for processes in opts.processes:
        limited = median(results.drains[(LIMITED, processes)])
        unlimited = median(results.drains[(UNLIMITED, processes)])
        ratio = limited / unlimited
        rows.append([f"drain jobs/s, {opts.tenants:,} tenants limited to {TENANT_LIMIT}, {processes} proc.",
                     fmt_rate(limited), fmt_rate(unlimited), f"{ratio:.2f}", f">= {RATIO_TARGET:.2f}",
                     wb.verdict(ratio >= RATIO_TARGET)])
    return rows


def claim_rows(results: Results, opts: Options) -> list[list[str]]:
    plain, few, many = (results.claim_costs[k] for k in (0, *KEY_COUNTS))
    few_ms, many_ms, plain_ms = median(few.times_ms), median(many.times_ms), median(plain.times_ms)
    ratio = many_ms / few_ms
    rows = [[f"claim of {CLAIM_BATCH}, ms (median; {opts.backlog:,} queued; {few.keys} keys vs no key)",
             f"{few_ms:.2f}", f"{plain_ms:.2f}", f"{few_ms / plain_ms:.2f}", "", ""],
            [f"claim of {CLAIM_BATCH}, ms (median; {opts.backlog:,} queued; {many.keys:,} vs {few.keys} keys)",
             f"{many_ms:.2f}", f"{few_ms:.2f}", f"{ratio:.2f}", f"<= {KEY_GROWTH_TOLERANCE:.2f}",
             wb.verdict(ratio <= KEY_GROWTH_TOLERANCE)]]
    small, large = sorted(results.saturated)
    small_ms, large_ms = median(results.saturated[small]), median(results.saturated[large])
    rows.append([f"empty claim behind a full key, ms ({large:,} vs {small:,} queued)", f"{large_ms:.2f}",
                 f"{small_ms:.2f}", f"{large_ms / small_ms:.2f}", f"<= {KEY_GROWTH_TOLERANCE:.2f}",
                 wb.verdict(large_ms / small_ms <= KEY_GROWTH_TOLERANCE)])
    if few.drains and many.drains:
        few_rate, many_rate = median(few.drains), median(many.drains)
        rows.append([f"drain jobs/s of the backlog, 1 proc. ({many.keys:,} vs {few.keys} keys)",
                     fmt_rate(many_rate), fmt_rate(few_rate), f"{many_rate / few_rate:.2f}", "", ""])
    return rows


def claim_details(results: Results, opts: Options) -> str:
    lines = [f"claim cost details ({opts.backlog:,} queued runs of {KEYED}, limit never reached, or of "
             f"{UNLIMITED} for 0 keys; claims rolled back):"]
    for cost in results.claim_costs.values():
        times = sorted(cost.times_ms)
        lines.append(f"  {cost.keys:>6,} keys: claim of {CLAIM_BATCH} got {cost.claimed} runs; ms p50 "
                     f"{median(times):.2f}, min {times[0]:.2f}, max {times[-1]:.2f} ({len(times)} calls); "
                     f"drain jobs/s {', '.join(fmt_rate(r) for r in cost.drains) or '-'}")
        for scan in cost.scans:
            if scan and cost.keys:
                lines.append(f"          candidate scan (EXPLAIN ANALYZE, BUFFERS): shared hit {scan['shared hit']:,}, "
                             f"read {scan['shared read']:,} buffers; ready rows read {scan['ready rows read']:,}; "
                             f"whole claim: {scan['claim hit']:,} buffers")
    return "\n".join(lines)


def drain_details(results: Results, opts: Options) -> str:
    lines = ["drain details (jobs/s per repeat):"]
    for (task, processes), rates in results.drains.items():
        lines.append(f"  {task:>12}, {processes} proc: " + ", ".join(fmt_rate(r) for r in rates))
    lines.append(f"  most runs of one tenant running at once (limit {TENANT_LIMIT}), by timestamps: "
                 + ", ".join(str(v) for v in results.overlap))
    lines.append(f"  ceilings, 1 client: one-row {', '.join(fmt_rate(r) for r in results.one_row)}; "
                 f"batched {', '.join(fmt_rate(r) for r in results.batched)} jobs/s")
    return "\n".join(lines)


def print_header(server: BenchServer, opts: Options) -> None:
    print_server_header(server)
    print(f"parameters: runs={opts.runs:,} over {opts.tenants:,} tenants, concurrency={opts.concurrency}, "
          f"processes={'/'.join(map(str, opts.processes))}, repeat={opts.repeat} (median), "
          f"backlog={opts.backlog:,} over {' vs '.join(f'{k:,}' for k in KEY_COUNTS)} keys, "
          f"claims={opts.claims}, pgbench seconds={opts.seconds}")


def print_results(results: Results, opts: Options) -> None:
    header = ["metric", "measured", "baseline", "ratio", "target", "met"]
    print()
    print(format_table(header, [*limited_rows(results, opts), *claim_rows(results, opts)]))
    print()
    print("baseline: the same runs without a concurrency key (drains), resp. the 10-key backlog (claim cost).")
    one_row, batched = median(results.one_row), median(results.batched)
    unlimited = median(results.drains[(UNLIMITED, 1)])
    limited = median(results.drains[(LIMITED, 1)])
    print(f"raw-SQL ceilings (pgbench, 1 client, plain table): one-row claim + complete {fmt_rate(one_row)} jobs/s, "
          f"batched ({wb.BATCH}/statement) {fmt_rate(batched)} jobs/s; 1-process drains: unlimited "
          f"{unlimited / one_row:.2f} / {unlimited / batched:.2f}, limited {limited / one_row:.2f} / "
          f"{limited / batched:.2f} of them.")
    print()
    print(drain_details(results, opts))
    print()
    print(claim_details(results, opts))


# -- command line -------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> tuple[Options, str | None]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--dsn", help="existing server to use (default: PGQUEUE_BENCH_DSN, else a throwaway one)")
    parser.add_argument("--runs", type=int, default=20_000, help="runs per limited/unlimited drain")
    parser.add_argument("--tenants", type=int, default=1_000, help="distinct tenants of the limited drain")
    parser.add_argument("--concurrency", type=int, default=100, help="worker --concurrency")
    parser.add_argument("--repeat", type=int, default=3, help="repeats (median reported)")
    parser.add_argument("--two-processes", action="store_true", help="also drain with 2 worker processes")
    parser.add_argument("--backlog", type=int, default=100_000, help="queued runs of the claim-cost backlogs")
    parser.add_argument("--claims", type=int, default=50, help="direct claims timed per backlog")
    parser.add_argument("--seconds", type=int, default=5, help="duration of each pgbench ceiling")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 1 repeat, 5,000 runs, 20,000 backlog, 20 claims, 2 s pgbench")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeat, args.runs, args.backlog, args.claims, args.seconds = 1, 5_000, 20_000, 20, 2
    opts = Options(runs=args.runs, tenants=args.tenants, concurrency=args.concurrency, repeat=args.repeat,
                   processes=(1, 2) if args.two_processes else (1,), backlog=args.backlog, claims=args.claims,
                   seconds=args.seconds)
    return opts, args.dsn


def main(argv: Sequence[str] | None = None) -> None:
    opts, dsn = parse_args(argv)
    with bench_server(dsn) as server:
        print_header(server, opts)
        with fresh_database(server, "pgqueue_bench_flow") as db:
            results = run_benchmark(db, opts)
        print_results(results, opts)


if __name__ == "__main__":
    main()
