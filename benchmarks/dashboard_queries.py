"""Plans of the dashboard's list queries on 1,000,000 runs: EXPLAIN (ANALYZE, BUFFERS) per filter.

    .venv/bin/python benchmarks/dashboard_queries.py [--runs 1000000]

Fills pgqueue.runs straight from generate_series (a month of history: 20 tasks, three queues,
95 % succeeded, tags, metadata and concurrency keys on a share of the runs, a few rare values),
then prints for each filter of the runs list, and for the overview's queries, the plan's shape,
its execution time and the buffers it touched — first with the indexes of migration 0007, then
without them, to show what each index buys. Figures, not asserts: no test times these.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import bench_server, format_table, fresh_database, print_server_header

from pgqueue.sqlfiles import query

FILL = """
INSERT INTO pgqueue.runs (task, queue, status, input, created_at, run_at, started_at, finished_at, attempt,
                          tags, metadata, concurrency_key, error)
SELECT 'task_' || (i % 20),
       CASE WHEN i % 10000 = 7 THEN 'rare' WHEN i % 4 = 0 THEN 'llm' ELSE 'default' END,
       status,
       jsonb_build_object('n', i),
       created, created, created + interval '1 second',
       CASE WHEN status IN ('queued', 'running', 'waiting') THEN NULL ELSE created + interval '3 seconds' END,
       1,
       CASE WHEN i % 10 = 0 THEN ARRAY['nightly'] WHEN i % 10000 = 3 THEN ARRAY['vip'] ELSE '{}' END,
       CASE WHEN i % 3 = 0 THEN jsonb_build_object('tenant', 't' || (i % 1000)) ELSE '{}' END,
       CASE WHEN i % 5 = 0 THEN 'tenant-' || (i % 500) END,
       CASE WHEN status IN ('failed', 'dead') THEN '{"type": "ValueError", "message": "bad"}'::jsonb END
  FROM (SELECT i,
               now() - interval '30 days' + make_interval(secs => i * 2592000.0 / {n}) AS created,
               CASE WHEN i % 100 < 3 THEN 'failed' WHEN i % 1000 < 45 AND i % 100 >= 3 AND i % 1000 >= 30
                    THEN 'cancelled' WHEN i % 1000 = 999 THEN 'dead'
                    WHEN i > {n} - 200 THEN 'queued' ELSE 'succeeded' END AS status
          FROM generate_series(1, {n}) AS i) AS g
"""

INDEXES_0007 = ("runs_final_status_id", "runs_finished_at", "runs_created_brin", "runs_tags", "runs_metadata",
                "runs_concurrency_key_id")

BASE = {"task": None, "status": None, "queue": None, "tag": None, "metadata": None, "concurrency_key": None,
        "since": None, "until": None, "before": None, "limit": 51}

CASES: list[tuple[str, dict[str, Any]]] = [
    ("no filter (first page)", {}),
    ("no filter, page at id 500,000", {"before": 500_000}),
    ("task=task_7", {"task": "task_7"}),
    ("status=failed (3 %)", {"status": "failed"}),
    ("status=dead (0.1 %)", {"status": "dead"}),
    ("status=queued (200 runs)", {"status": "queued"}),
    ("status=succeeded (95 %)", {"status": "succeeded"}),
    ("queue=llm (25 %)", {"queue": "llm"}),
    ("queue=rare (0.01 %)", {"queue": "rare"}),
    ("tag=nightly (10 %)", {"tag": "nightly"}),
    ("tag=vip (0.01 %)", {"tag": "vip"}),
    ("metadata tenant=t42 (0.03 %)", {"metadata": '{"tenant": "t42"}'}),
    ("concurrency key tenant-42 (0.2 %)", {"concurrency_key": "tenant-42"}),
    ("since 1 hour ago", {"since": "1h"}),
    ("between 20 and 19 days ago", {"since": "20d", "until": "19d"}),
    ("task + status=failed", {"task": "task_3", "status": "failed"}),
]


def explain(conn: psycopg.Connection[Any], sql: str, params: Any) -> tuple[str, float, int, int]:
    row = conn.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + sql, params).fetchone()  # type: ignore[operator]
    assert row is not None
    plan = row[0][0]
    top = plan["Plan"]
    return shape(top), float(plan["Execution Time"]), int(top.get("Shared Hit Blocks", 0)), \
        int(top.get("Shared Read Blocks", 0))


def shape(node: dict[str, Any]) -> str:
    """The plan as nested node names: Limit > Index Scan Backward(runs_pkey) ..."""
    name = node["Node Type"]
    if node.get("Scan Direction") == "Backward":
        name += " Backward"
    if node.get("Index Name"):
        name += f"({node['Index Name']})"
    children = [shape(child) for child in node.get("Plans", []) if child.get("Parent Relationship") != "InitPlan"]
    if not children:
        return name
    return f"{name} > {children[0]}" if len(children) == 1 else f"{name} > [{'; '.join(children)}]"


def times(conn: psycopg.Connection[Any], value: str) -> Any:
    if value.endswith("d") or value.endswith("h"):
        unit = "days" if value.endswith("d") else "hours"
        row = conn.execute(f"SELECT now() - interval '{int(value[:-1])} {unit}'").fetchone()  # type: ignore[arg-type]
        return row[0] if row else None
    return value


def measure(conn: psycopg.Connection[Any], label: str) -> list[list[str]]:
    # as the dashboard runs the list (queries.list_runs_op): serial plans
    conn.execute(query("dashboard.serial_plans").replace("SET LOCAL", "SET"))  # type: ignore[arg-type]
    rows = []
    list_sql = query("dashboard.list_runs")
    for name, case in CASES:
        params = {**BASE, **case}
        for key in ("since", "until"):
            if params[key]:
                params[key] = times(conn, params[key])
        explain(conn, list_sql, params)  # warm the cache: figures are for a warm dashboard
        plan, ms, hit, read = explain(conn, list_sql, params)
        rows.append([label, name, f"{ms:.2f}", f"{hit + read}", plan])
    limit = {"limit": 500}
    for file, name, page_params in (("dashboard", "activity", None), ("dashboard", "workers", None),
                                    ("flow", "concurrency_status", limit), ("flow", "rate_status", limit)):
        sql = query(file, name)
        explain(conn, sql, page_params)
        plan, ms, hit, read = explain(conn, sql, page_params)
        rows.append([label, f"overview: {name}", f"{ms:.2f}", f"{hit + read}", plan])
    plan, ms, hit, read = explain(conn, query("queues.queue_status"), None)
    rows.append([label, "overview: queue_status", f"{ms:.2f}", f"{hit + read}", plan])
    conn.execute("RESET max_parallel_workers_per_gather")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1_000_000)
    args = parser.parse_args()
    with bench_server() as server, fresh_database(server, "bench_dashboard") as dsn:
        print_server_header(server)
        with psycopg.connect(dsn, autocommit=True) as conn:
            started = time.monotonic()
            conn.execute(FILL.replace("{n}", str(int(args.runs))))  # type: ignore[arg-type]
            conn.execute("VACUUM ANALYZE pgqueue.runs")
            size = conn.execute("SELECT pg_size_pretty(pg_total_relation_size('pgqueue.runs'))").fetchone()
            print(f"filled {args.runs:,} runs in {time.monotonic() - started:.1f} s ({size[0] if size else '?'} "
                  "with indexes)\n")
            sizes = conn.execute("SELECT indexrelid::regclass::text, pg_size_pretty(pg_relation_size(indexrelid)) "
                                 "FROM pg_index WHERE indrelid = 'pgqueue.runs'::regclass ORDER BY 1").fetchall()
            print("indexes of pgqueue.runs: " + ", ".join(f"{n.split('.')[-1]} {s}" for n, s in sizes) + "\n")
            rows = measure(conn, "with 0007")
            for index in INDEXES_0007:
                conn.execute(f"DROP INDEX pgqueue.{index}")  # type: ignore[arg-type]
            rows += measure(conn, "without")
        print(format_table(["indexes", "query", "ms", "buffers", "plan"], rows))
        print(json.dumps({"runs": args.runs}))


if __name__ == "__main__":
    main()
