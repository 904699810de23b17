"""Retention: batched DELETE (pgqueue.prune) against dropping time partitions.

What it measures, on --runs finished runs (one attempt each) whose finishing times spread evenly
over the last --days days, so that with the default policy (succeeded: 7 days) the oldest
(days - 7) / days of them are due:

- batched DELETE: the real schema (pgqueue.runs and pgqueue.attempts with all their indexes),
  pruned by `SELECT * FROM pgqueue.prune(--batch)` until it returns zero: time, WAL written
  (pg_current_wal_lsn before and after) per pruned run, sizes of tables and indexes before,
  after, and after a plain VACUUM.
- partition drop: a copy of the same rows in tables partitioned by finished_at, one partition
  per day plus a DEFAULT partition (where unfinished runs live: finished_at is NULL), with the
  same non-unique indexes (a partitioned table cannot have a primary key on id nor a unique
  index on (task, idempotency_key), since unique indexes must contain the partition key); the
  due days are detached and dropped: time, WAL, sizes.
- the hot path meanwhile: a second connection loops over a claim (pgqueue.claim of 10 runs from
  a backlog of its own queue) and their completion (status succeeded, finished_at now()); its
  latency (p50, p99, max per claim + completion) with nothing else running, while the DELETE
  prunes, and, for the partitioned copy, the same completion UPDATE on the copy (a row moving
  from the DEFAULT partition to today's) while its partitions are dropped.
- WAL per completion: the completion UPDATE of --completions runs, plain table vs partitioned
  copy (there the row moves partition: a delete and an insert).

The server is a throwaway embedded PostgreSQL unless --dsn or PGQUEUE_BENCH_DSN names one; the
benchmark runs in a fresh, migrated database.

    .venv/bin/python benchmarks/retention.py --runs 1000000        # what the README reports
    .venv/bin/python benchmarks/retention.py --runs 10000000       # the issue's scale (disk, time)
"""

from __future__ import annotations

import argparse
import re
import statistics
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from _common import bench_server, format_table, fresh_database, log, print_server_header
from psycopg import sql

Conn = psycopg.Connection[tuple[Any, ...]]
CHUNK = 1_000_000


def generate(conn: Conn, runs: int, days: int) -> None:
    """`runs` succeeded runs of task 'bench' finishing evenly over the last `days` days, oldest
    first (ids and finishing times grow together, as in a real queue), one attempt each."""
    conn.execute("INSERT INTO pgqueue.tasks (name) VALUES ('bench') ON CONFLICT DO NOTHING")
    for start in range(0, runs, CHUNK):
        stop = min(runs, start + CHUNK)
        log(f"  generating runs {start:,}..{stop:,}")
        conn.execute("""
            INSERT INTO pgqueue.runs (task, queue, status, input, result, run_at, created_at, started_at,
                                      finished_at, attempt)
            SELECT 'bench', 'bench', 'succeeded', jsonb_build_object('doc', i), '{"ok": true}', t, t,
                   t + interval '10 ms', t + interval '50 ms', 1
              FROM generate_series(%(start)s + 1, %(stop)s) AS i,
                   LATERAL (SELECT now() - make_interval(days => %(days)s)
                                   + make_interval(secs => i::float8 / %(runs)s * %(days)s * 86400) AS t) x""",
                     {"start": start, "stop": stop, "days": days, "runs": runs})
        conn.execute("""
            INSERT INTO pgqueue.attempts (run_id, attempt, started_at, finished_at, outcome)
            SELECT id, 1, started_at, finished_at, 'succeeded' FROM pgqueue.runs
             WHERE task = 'bench' AND id > coalesce((SELECT max(run_id) FROM pgqueue.attempts), 0)""")
    conn.execute("VACUUM ANALYZE pgqueue.runs, pgqueue.attempts")


def build_partitioned(conn: Conn, days: int, *, copy: bool = True) -> None:
    """bench_part.runs and bench_part.attempts: the same rows (unless not `copy`: empty),
    partitioned by finished_at day."""
    conn.execute("DROP SCHEMA IF EXISTS bench_part CASCADE")
    conn.execute("CREATE SCHEMA bench_part")
    for table in ("runs", "attempts"):
        conn.execute(sql.SQL("CREATE TABLE bench_part.{t} (LIKE pgqueue.{t} INCLUDING DEFAULTS) "
                             "PARTITION BY RANGE (finished_at)").format(t=sql.Identifier(table)))
        conn.execute(sql.SQL("CREATE TABLE bench_part.{p} PARTITION OF bench_part.{t} DEFAULT").format(
            p=sql.Identifier(f"{table}_unfinished"), t=sql.Identifier(table)))
        for day in range(-days - 1, 3):
            conn.execute(sql.SQL(
                "CREATE TABLE bench_part.{p} PARTITION OF bench_part.{t} FOR VALUES FROM "
                "(date_trunc('day', now()) + make_interval(days => {d})) "
                "TO (date_trunc('day', now()) + make_interval(days => {d1}))").format(
                    p=sql.Identifier(f"{table}_d{day + days + 1:03d}"), t=sql.Identifier(table),
                    d=sql.Literal(day), d1=sql.Literal(day + 1)))
    # the same indexes as pgqueue's tables, none unique (a unique index must contain finished_at)
    for table in ("runs", "attempts"):
        for (definition,) in conn.execute("SELECT indexdef FROM pg_indexes WHERE schemaname = 'pgqueue' "
                                          "AND tablename = %s", (table,)).fetchall():
            conn.execute(re.sub(r"^CREATE (UNIQUE )?INDEX \S+ ON pgqueue\.(\w+)", r"CREATE INDEX ON bench_part.\2",
                                definition))
    if not copy:
        return
    log("  copying into the partitioned tables")
    conn.execute("INSERT INTO bench_part.runs SELECT * FROM pgqueue.runs WHERE task = 'bench'")
    conn.execute("INSERT INTO bench_part.attempts SELECT * FROM pgqueue.attempts a "
                 "WHERE EXISTS (SELECT 1 FROM pgqueue.runs r WHERE r.id = a.run_id AND r.task = 'bench')")
    conn.execute("VACUUM ANALYZE bench_part.runs, bench_part.attempts")


def sizes(conn: Conn, schema: str) -> dict[str, tuple[int, int]]:
    """(table bytes, index bytes) of runs and attempts, partitions summed."""
    found = {}
    for table in ("runs", "attempts"):
        row = conn.execute("""
            SELECT coalesce(sum(pg_relation_size(c.oid)), 0)::bigint, coalesce(sum(pg_indexes_size(c.oid)), 0)::bigint
              FROM pg_class c
             WHERE c.oid = %(t)s::regclass
                OR c.oid IN (SELECT relid FROM pg_partition_tree(%(t)s::regclass))""",
                           {"t": f"{schema}.{table}"}).fetchone()
        assert row is not None
        found[table] = (int(row[0]), int(row[1]))
    return found


def wal_lsn(conn: Conn) -> str:
    return str(conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0])  # type: ignore[index]


def wal_since(conn: Conn, lsn: str) -> int:
    return int(conn.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s)", (lsn,)).fetchone()[0])  # type: ignore[index]


@dataclass
class Latencies:
    samples: list[float] = field(default_factory=list)

    def summary(self) -> str:
        if not self.samples:
            return "-"
        ordered = sorted(self.samples)
        p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
        return (f"p50 {statistics.median(ordered) * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, "
                f"max {ordered[-1] * 1000:.1f} ms ({len(ordered):,} samples)")


class HotPath:
    """A loop on its own connection until stopped: `step(conn)` timed each time."""

    def __init__(self, dsn: str, step: Callable[[Conn], None]) -> None:
        self.dsn = dsn
        self.step = step
        self.latencies = Latencies()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop)
        self.error: BaseException | None = None

    def _loop(self) -> None:
        try:
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                while not self._stop.is_set():
                    started = time.perf_counter()
                    self.step(conn)
                    self.latencies.samples.append(time.perf_counter() - started)
                    self._stop.wait(0.005)
        except BaseException as exc:  # reported by stop()
            self.error = exc

    def __enter__(self) -> HotPath:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)
        if self.error is not None:
            raise self.error


def claim_and_complete(conn: Conn) -> None:
    """A worker's round trip on the real schema: claim 10 runs of queue 'hot', complete them."""
    with conn.transaction():
        ids = [r[0] for r in conn.execute("SELECT id FROM pgqueue.claim(%s, '{hot}', 10, 60)", (uuid.uuid4(),))]
    conn.execute("UPDATE pgqueue.runs SET status = 'succeeded', finished_at = now(), worker_id = NULL "
                 "WHERE id = ANY(%s) AND status = 'running'", (ids,))


class PartitionedCompleter:
    """The completion on the partitioned copy: 10 unfinished runs at a time finish (each moves from
    the DEFAULT partition to today's)."""

    def __init__(self, first_id: int) -> None:
        self.next_id = first_id

    def __call__(self, conn: Conn) -> None:
        ids = list(range(self.next_id, self.next_id + 10))
        self.next_id += 10
        conn.execute("UPDATE bench_part.runs SET status = 'succeeded', finished_at = now() "
                     "WHERE id = ANY(%s) AND finished_at IS NULL", (ids,))


def unfinished(conn: Conn, n: int) -> tuple[int, int]:
    """`n` queued runs of queue 'hot' (claimable) and the same rows, as running, in the partitioned
    copy's DEFAULT partition; their id range."""
    ids = [r[0] for r in conn.execute(
        "SELECT id FROM pgqueue.enqueue_many('bench', (SELECT array_agg(jsonb_build_object('hot', i)) "
        "FROM generate_series(1, %s) i), queue => 'hot')", (n,))]
    conn.execute("INSERT INTO bench_part.runs SELECT (jsonb_populate_record(NULL::pgqueue.runs, "
                 "to_jsonb(r) || '{\"status\": \"running\"}')).* FROM pgqueue.runs r WHERE id = ANY(%s)", (ids,))
    conn.execute("VACUUM ANALYZE pgqueue.runs, pgqueue.ready, bench_part.runs")
    return min(ids), max(ids)


def mb(n: int) -> str:
    return f"{n / 1048576:,.0f} MB"


def size_rows(label: str, found: dict[str, tuple[int, int]]) -> list[str]:
    return [label, mb(found["runs"][0]), mb(found["runs"][1]), mb(found["attempts"][0]), mb(found["attempts"][1])]


def run(dsn: str, runs: int, days: int, batch: int, completions: int, *, partitioned: bool = True) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        t0 = time.perf_counter()
        generate(conn, runs, days)
        build_partitioned(conn, days, copy=partitioned)
        first_hot, _ = unfinished(conn, max(300_000, completions * 3))
        log(f"  set up in {time.perf_counter() - t0:,.0f}s")
        due = conn.execute("SELECT count(*) FROM pgqueue.runs WHERE task = 'bench' "
                           "AND finished_at < now() - interval '7 days'").fetchone()[0]  # type: ignore[index]
        print(f"rows:       {runs:,} finished runs + {runs:,} attempts over {days} days; {due:,} runs due "
              f"(succeeded, kept 7 days); batch {batch}")

        # WAL per completion, plain vs partitioned
        rows: list[list[str]] = []
        ids = [r[0] for r in conn.execute("SELECT id FROM pgqueue.runs WHERE queue = 'hot' ORDER BY id LIMIT %s",
                                          (completions,))]
        lsn = wal_lsn(conn)
        for i in range(0, len(ids), 100):
            conn.execute("UPDATE pgqueue.runs SET status = 'succeeded', finished_at = now() WHERE id = ANY(%s)",
                         (ids[i:i + 100],))
        plain_wal = wal_since(conn, lsn) / len(ids)
        lsn = wal_lsn(conn)
        for i in range(0, len(ids), 100):
            conn.execute("UPDATE bench_part.runs SET status = 'succeeded', finished_at = now() WHERE id = ANY(%s)",
                         (ids[i:i + 100],))
        part_wal = wal_since(conn, lsn) / len(ids)
        conn.execute("DELETE FROM pgqueue.ready WHERE run_id = ANY(%s)", (ids,))
        print(f"completion: WAL per completed run {plain_wal:,.0f} B (plain) vs {part_wal:,.0f} B "
              f"(partitioned: the row moves partition), {len(ids):,} runs in statements of 100")

        with HotPath(dsn, claim_and_complete) as idle:
            time.sleep(10)
        partitioned_completer = PartitionedCompleter(first_hot + completions)
        with HotPath(dsn, partitioned_completer) as idle_part:
            time.sleep(10)

        # batched DELETE
        before = sizes(conn, "pgqueue")
        lsn = wal_lsn(conn)
        pruned = batches = 0
        with HotPath(dsn, claim_and_complete) as during:
            started = time.perf_counter()
            while True:
                got = conn.execute("SELECT runs FROM pgqueue.prune(%s)", (batch,)).fetchone()[0]  # type: ignore[index]
                batches += 1
                pruned += got
                if got == 0:
                    break
                if batches % 200 == 0:
                    log(f"  pruned {pruned:,}")
            delete_s = time.perf_counter() - started
        delete_wal = wal_since(conn, lsn)
        after = sizes(conn, "pgqueue")
        conn.execute("VACUUM pgqueue.runs, pgqueue.attempts")
        vacuumed = sizes(conn, "pgqueue")
        rows.append(["batched DELETE", f"{pruned:,}", f"{delete_s:,.1f}", f"{delete_s / max(pruned, 1) * 1e6:,.1f}",
                     f"{delete_wal / max(pruned, 1):,.0f}", during.latencies.summary()])

        if partitioned:
            part_before, part_after = drop_partitions(conn, dsn, partitioned_completer, rows)

    print()
    print(format_table(["pruning", "runs removed", "seconds", "us per run", "WAL B per run",
                        "hot path meanwhile (claim+complete / partitioned: complete)"], rows))
    print(f"\nhot path with nothing else running: plain claim+complete {idle.latencies.summary()}; "
          f"partitioned complete {idle_part.latencies.summary()}")
    print()
    table = [size_rows("plain before", before), size_rows("plain after DELETE", after),
             size_rows("plain after VACUUM", vacuumed)]
    if partitioned:
        table += [size_rows("partitioned before", part_before), size_rows("partitioned after drop", part_after)]
    print(format_table(["sizes", "runs table", "runs indexes", "attempts table", "attempts indexes"], table))


def drop_partitions(conn: Conn, dsn: str, completer: PartitionedCompleter,
                    rows: list[list[str]]) -> tuple[dict[str, tuple[int, int]], dict[str, tuple[int, int]]]:
    """Detach and drop the due day partitions, with the completion loop on the copy meanwhile."""
    part_before = sizes(conn, "bench_part")
    parts = [r[0] for r in conn.execute("""
        SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
         WHERE i.inhparent = 'bench_part.runs'::regclass AND c.relname <> 'runs_unfinished'
           AND pg_get_expr(c.relpartbound, c.oid) ~ 'TO'
           AND (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'TO \\(''([^'']+)''\\)'))[1]::timestamptz
               <= now() - interval '7 days'
         ORDER BY 1""")]
    dropped = conn.execute(sql.SQL("SELECT count(*) FROM ({}) u").format(sql.SQL(" UNION ALL ").join(
        sql.SQL("SELECT 1 FROM bench_part.{}").format(sql.Identifier(p)) for p in parts))).fetchone()[0]  # type: ignore[index]
    lsn = wal_lsn(conn)
    with HotPath(dsn, completer) as during_part:
        started = time.perf_counter()
        for name in parts:
            for table in ("runs", "attempts"):
                part = sql.Identifier(name.replace("runs_", f"{table}_", 1))
                conn.execute(sql.SQL("ALTER TABLE bench_part.{} DETACH PARTITION bench_part.{}").format(
                    sql.Identifier(table), part))
                conn.execute(sql.SQL("DROP TABLE bench_part.{}").format(part))
        drop_s = time.perf_counter() - started
    drop_wal = wal_since(conn, lsn)
    part_after = sizes(conn, "bench_part")
    rows.append([f"drop {len(parts)} day partitions", f"{dropped:,}", f"{drop_s:,.2f}",
                 f"{drop_s / max(dropped, 1) * 1e6:,.3f}", f"{drop_wal / max(dropped, 1):,.2f}",
                 during_part.latencies.summary()])
    return part_before, part_after


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=1_000_000, help="finished runs generated (default 1,000,000)")
    parser.add_argument("--days", type=int, default=10, help="days their finishing times span (default 10)")
    parser.add_argument("--batch", type=int, default=1000, help="pgqueue.prune batch size (default 1000)")
    parser.add_argument("--completions", type=int, default=10_000, help="runs completed to measure WAL")
    parser.add_argument("--delete-only", action="store_true",
                        help="measure the batched DELETE only (no partitioned copy: half the set-up time)")
    parser.add_argument("--dsn", default=None, help="server to use (default: a throwaway embedded one)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    with bench_server(args.dsn) as server:
        print_server_header(server)
        with fresh_database(server, "bench_retention") as dsn:
            run(dsn, args.runs, args.days, args.batch, args.completions, partitioned=not args.delete_only)


if __name__ == "__main__":
    main()
