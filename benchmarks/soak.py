"""Soak: churn runs through real worker processes with a short retention, and watch that the
database stays the same size.

Workers (`pgqueue worker soak_app:app`, --workers processes, pruner every --prune-interval
seconds) run a steady mix enqueued by this process: plain runs, three-step durable runs,
fan-outs of 100 children, and keyed runs limited to 3 running per tenant (benchmarks/soak_app.py).
Retention is set at runtime to --retention seconds for every final status and for events. The
producer keeps the backlog under --backlog queued runs. Every --sample seconds it records:

- the size of every pgqueue table and of its indexes (pg_relation_size, pg_indexes_size) and
  their dead tuples (pg_stat_user_tables.n_dead_tup);
- throughput: runs finished since the previous sample (finished_at, the database clock);
- the claim's cost: shared buffers hit + read by one `pgqueue.claim(..., 10, ...)` of the
  'default' queue, from EXPLAIN (ANALYZE, BUFFERS) in a transaction that is rolled back (the
  claimed runs stay queued), and its execution time.

Pass (after a warm-up of --warmup seconds, at least --retention + 2 x --prune-interval): for each
of total size, claim buffers and throughput, the medians of the first and of the last third of
the samples are within +/-25% of the overall median (no drift; single samples are noisy). An
SVG plot of sizes and throughput over time is written (--svg), with the samples beside it as CSV.
The issue asks for 1,000,000 runs; pass --minutes to churn longer.

    .venv/bin/python benchmarks/soak.py --minutes 8 --svg docs/soak.svg
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from _common import bench_server, format_table, fresh_database, log, print_server_header

BENCH_DIR = Path(__file__).resolve().parent
Conn = psycopg.Connection[tuple[Any, ...]]


@dataclass
class Sample:
    at: float
    finished: int
    sizes: dict[str, int]
    index_sizes: dict[str, int]
    dead: dict[str, int]
    claim_buffers: int
    claim_ms: float

    @property
    def total_mb(self) -> float:
        return (sum(self.sizes.values()) + sum(self.index_sizes.values())) / 1048576


@contextlib.contextmanager
def workers(dsn: str, count: int, concurrency: int, prune_interval: float) -> Iterator[None]:
    env = {**os.environ, "PGQUEUE_DSN": dsn,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(BENCH_DIR), os.environ.get("PYTHONPATH")]))}
    argv = [sys.executable, "-m", "pgqueue_cli", "worker", "soak_app:app", "--concurrency", str(concurrency),
            "--prune-interval", str(prune_interval), "--log-level", "WARNING"]
    with tempfile.TemporaryDirectory(prefix="pgqueue-soak-") as folder:
        logs = [Path(folder) / f"worker-{i}.log" for i in range(count)]
        procs = [subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=path.open("wb")) for path in logs]
        try:
            yield
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            for proc, path in zip(procs, logs, strict=True):
                if proc.wait(timeout=120) != 0:
                    log(f"worker exited with {proc.returncode}:\n{path.read_text()[-3000:]}")


def enqueue_mix(conn: Conn, cycle: int) -> int:
    """One round of the mix; returns the runs it creates (children included)."""
    conn.execute("SELECT pgqueue.enqueue_many('plain', (SELECT array_agg(jsonb_build_object('n', i)) "
                 "FROM generate_series(1, 60) i), queue => 'default')")
    conn.execute("SELECT pgqueue.enqueue_many('three_steps', (SELECT array_agg(jsonb_build_object('n', i)) "
                 "FROM generate_series(1, 10) i), queue => 'default')")
    conn.execute("SELECT pgqueue.enqueue('fan_out', '{\"n\": 100}', queue => 'default')")
    conn.execute("SELECT pgqueue.enqueue_many('keyed', (SELECT array_agg(jsonb_build_object("
                 "'tenant', 't' || (i % 10), 'n', i)) FROM generate_series(1, 20) i), "
                 "concurrency_keys => (SELECT array_agg('t' || (i % 10)) FROM generate_series(1, 20) i), "
                 "queue => 'default')")
    return 60 + 10 + 101 + 20


def sample(conn: Conn, since: float) -> Sample:
    rows = conn.execute("""
        SELECT c.relname, pg_relation_size(c.oid), pg_indexes_size(c.oid), coalesce(s.n_dead_tup, 0)
          FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
          LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid
         WHERE n.nspname = 'pgqueue' AND c.relkind = 'r'""").fetchall()
    finished = conn.execute("SELECT count(*) FROM pgqueue.runs WHERE finished_at > to_timestamp(%s)",
                            (since,)).fetchone()[0]  # type: ignore[index]
    with conn.transaction(force_rollback=True):
        plan = conn.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) "
                            "SELECT * FROM pgqueue.claim(%s, '{default}', 10, 60)", (uuid.uuid4(),)).fetchone()[0]  # type: ignore[index]
    top = (plan if isinstance(plan, list) else json.loads(plan))[0]
    node = top["Plan"]
    return Sample(time.time(), int(finished), {r[0]: int(r[1]) for r in rows}, {r[0]: int(r[2]) for r in rows},
                  {r[0]: int(r[3]) for r in rows}, int(node.get("Shared Hit Blocks", 0)) +
                  int(node.get("Shared Read Blocks", 0)), float(top.get("Execution Time", 0.0)))


def flat(values: Sequence[float]) -> tuple[float, float, float, float, float, bool]:
    """(median, min, max, median of the first third, of the last third, flat). Flat: both thirds'
    medians within +/-25% of the overall median, i.e. no drift. Single samples are noisy (a
    fan-out's 100 children finish within one sample, other sessions share the machine), so the
    test is on the trend, and min and max are shown as they are."""
    mid = statistics.median(values)
    third = max(1, len(values) // 3)
    first, last = statistics.median(values[:third]), statistics.median(values[-third:])
    ok = mid > 0 and all(0.75 * mid <= v <= 1.25 * mid for v in (first, last))
    return mid, min(values), max(values), first, last, ok


def svg(samples: Sequence[Sample], throughput: Sequence[float], warm: float, path: Path) -> None:
    """Two panels drawn by hand (no plotting dependency): sizes (MB) and throughput (runs/s)."""
    t0 = samples[0].at
    xs = [s.at - t0 for s in samples]
    width, height, left, top, panel = 760, 460, 60, 30, 170
    x_max = max(xs) or 1.0

    def px(x: float) -> float:
        return left + (width - left - 20) * x / x_max

    series = {
        "all pgqueue tables + indexes": ([s.total_mb for s in samples], "#1f77b4"),
        "runs (table)": ([s.sizes.get("runs", 0) / 1048576 for s in samples], "#ff7f0e"),
        "runs (indexes)": ([s.index_sizes.get("runs", 0) / 1048576 for s in samples], "#2ca02c"),
        "ready + indexes": ([(s.sizes.get("ready", 0) + s.index_sizes.get("ready", 0)) / 1048576 for s in samples],
                            "#d62728"),
    }
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'font-family="sans-serif" font-size="11">', f'<rect width="{width}" height="{height}" fill="white"/>']

    def panel_lines(y0: float, lines: dict[str, tuple[list[float], str]], unit: str, title: str) -> None:
        y_max = max(max(v) for v, _ in lines.values()) * 1.15 or 1.0
        parts.append(f'<text x="{left}" y="{y0 - 8}" font-weight="bold">{title}</text>')
        parts.append(f'<rect x="{left}" y="{y0}" width="{width - left - 20}" height="{panel}" fill="none" '
                     f'stroke="#999"/>')
        for frac in (0, 0.5, 1):
            y = y0 + panel * (1 - frac)
            parts.append(f'<text x="{left - 5}" y="{y + 4}" text-anchor="end">{y_max * frac:,.0f}</text>')
        parts.append(f'<text x="12" y="{y0 + panel / 2}" transform="rotate(-90 12 {y0 + panel / 2})" '
                     f'text-anchor="middle">{unit}</text>')
        wx = px(warm)
        parts.append(f'<line x1="{wx}" y1="{y0}" x2="{wx}" y2="{y0 + panel}" stroke="#bbb" stroke-dasharray="4"/>')
        for i, (label, (values, colour)) in enumerate(lines.items()):
            points = " ".join(f"{px(x):.1f},{y0 + panel * (1 - v / y_max):.1f}"
                              for x, v in zip(xs, values, strict=True))
            parts.append(f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="1.5"/>')
            parts.append(f'<text x="{left + 10 + 190 * (i % 4)}" y="{y0 + 14}" fill="{colour}">{label}</text>')

    panel_lines(top + 10, series, "MB", "Sizes of pgqueue tables and indexes (dashed: end of warm-up)")
    panel_lines(top + 40 + panel, {"runs finished per second": (list(throughput), "#9467bd")}, "runs/s",
                "Throughput")
    base = top + 40 + 2 * panel
    for frac in (0, 0.25, 0.5, 0.75, 1):
        parts.append(f'<text x="{px(x_max * frac)}" y="{base + 16}" text-anchor="middle">{x_max * frac:,.0f} s</text>')
    parts.append("</svg>")
    path.write_text("\n".join(parts) + "\n", encoding="utf-8")


def run(dsn: str, args: argparse.Namespace) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO pgqueue.tasks (name) VALUES ('plain'), ('three_steps'), ('fan_out'), ('child'), "
                     "('keyed') ON CONFLICT DO NOTHING")
        conn.execute("SELECT pgqueue.set_retention(make_interval(secs => %s))", (args.retention,))
        conn.execute("SELECT pgqueue.set_retention(make_interval(secs => %s), 'events')", (args.retention,))
        samples: list[Sample] = []
        enqueued, cycle = 0, 0
        with workers(dsn, args.workers, args.concurrency, args.prune_interval):
            started = time.time()
            last_sample = started
            samples.append(sample(conn, started))
            while time.time() - started < args.minutes * 60:
                backlog = conn.execute("SELECT count(*) FROM pgqueue.ready").fetchone()[0]  # type: ignore[index]
                if backlog < args.backlog:
                    enqueued += enqueue_mix(conn, cycle)
                    cycle += 1
                else:
                    time.sleep(0.05)
                if time.time() - last_sample >= args.sample:
                    samples.append(sample(conn, last_sample))
                    last_sample = samples[-1].at
                    s = samples[-1]
                    log(f"  {s.at - started:6.0f}s  {enqueued:,} enqueued  {s.total_mb:7.1f} MB  "
                        f"runs {conn.execute('SELECT count(*) FROM pgqueue.runs').fetchone()[0]:,}  "  # type: ignore[index]
                        f"claim {s.claim_buffers} buffers")
        pruned = conn.execute("SELECT sum(total_runs) FROM pgqueue.prune_stats").fetchone()[0]  # type: ignore[index]
    throughput = [0.0] + [s.finished / max(s.at - p.at, 1e-6) for p, s in itertools.pairwise(samples)]
    warm = max(args.warmup, args.retention + 2 * args.prune_interval)
    after = [(s, t) for s, t in zip(samples, throughput, strict=True) if s.at - samples[0].at >= warm][1:]
    print(f"churned:    {enqueued:,} runs enqueued (children included) in {args.minutes:g} min by {args.workers} "
          f"worker process(es) x {args.concurrency}; retention {args.retention:g}s; {int(pruned or 0):,} runs pruned")
    rows = []
    verdicts = []
    for label, values in (("total size MB", [s.total_mb for s, _ in after]),
                          ("runs table MB", [s.sizes.get("runs", 0) / 1048576 for s, _ in after]),
                          ("runs indexes MB", [s.index_sizes.get("runs", 0) / 1048576 for s, _ in after]),
                          ("claim buffers", [float(s.claim_buffers) for s, _ in after]),
                          ("claim ms", [s.claim_ms for s, _ in after]),
                          ("throughput runs/s", [t for _, t in after]),
                          ("dead tuples (runs)", [float(s.dead.get("runs", 0)) for s, _ in after])):
        if not values:
            continue
        mid, lo, hi, first, last, ok = flat(values)
        gated = label in ("total size MB", "claim buffers", "throughput runs/s")
        if gated:
            verdicts.append(ok)
        rows.append([label, f"{mid:,.1f}", f"{lo:,.1f}", f"{hi:,.1f}", f"{first:,.1f}", f"{last:,.1f}",
                     ("PASS" if ok else "FAIL") if gated else ("flat" if ok else "drifts")])
    print(format_table(["after warm-up", "median", "min", "max", "1st third", "last third",
                        "thirds within +/-25%"], rows))
    print(f"verdict:    {'PASS' if verdicts and all(verdicts) else 'FAIL'} ({len(after)} samples after a "
          f"{warm:g}s warm-up)")
    if args.svg:
        svg(samples, throughput, warm, Path(args.svg))
        csv = Path(args.svg).with_suffix(".csv")
        csv.write_text("seconds,total_mb,runs_mb,runs_indexes_mb,ready_mb,runs_dead,claim_buffers,claim_ms,"
                       "runs_per_s\n" + "".join(
                           f"{s.at - samples[0].at:.1f},{s.total_mb:.2f},{s.sizes.get('runs', 0) / 1048576:.2f},"
                           f"{s.index_sizes.get('runs', 0) / 1048576:.2f},"
                           f"{(s.sizes.get('ready', 0) + s.index_sizes.get('ready', 0)) / 1048576:.2f},"
                           f"{s.dead.get('runs', 0)},{s.claim_buffers},{s.claim_ms:.2f},{t:.1f}\n"
                           for s, t in zip(samples, throughput, strict=True)), encoding="utf-8")
        print(f"plot:       {args.svg} (samples: {csv})")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--minutes", type=float, default=8.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--retention", type=float, default=30.0, help="seconds finished runs are kept")
    parser.add_argument("--prune-interval", type=float, default=5.0)
    parser.add_argument("--backlog", type=int, default=2000, help="most queued runs before enqueueing waits")
    parser.add_argument("--sample", type=float, default=5.0, help="seconds between samples")
    parser.add_argument("--warmup", type=float, default=150.0,
                        help="seconds before sizes must be flat (at least retention + 2 prune intervals; "
                             "autovacuum wakes every autovacuum_naptime, 60s by default)")
    parser.add_argument("--svg", default=None, help="write the plot here (e.g. docs/soak.svg)")
    parser.add_argument("--dsn", default=None)
    args = parser.parse_args(argv)
    with bench_server(args.dsn) as server:
        print_server_header(server)
        with fresh_database(server, "bench_soak") as dsn:
            run(dsn, args)


if __name__ == "__main__":
    main()
