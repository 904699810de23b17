"""The claim's cost with and without placement (docs/placement.md).

The median time of one `pgqueue.claim(worker, '{bench}', 10, 60, labels)` over a constant
backlog (each claim is rolled back), for:

- plain: tasks without placement, a worker without labels (the path every user pays);
- plain, labelled worker: the same runs, a worker with 4 labels and a version;
- required, 1 group: every run needs gpu=a100, the worker has it;
- required, 8 groups: runs spread over 8 label sets, half of them the worker lacks (their
  groups are skipped, never read), the worker has 4 labels;
- preferred elsewhere: half the backlog prefers another worker (within its wait), in front;
- slots: every run takes 3 slots (a claim of 10 slots takes 3 runs).

    .venv/bin/python benchmarks/placement.py --backlog 20000
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from typing import Any

import psycopg
from _common import bench_server, fresh_database

REPEATS = 200
LABELS = ["gpu=a100", "model=llama3", "region=eu", "tier=gold", "@version=v1"]


def fill(conn: psycopg.Connection[Any], backlog: int, placement: str) -> None:
    conn.execute("TRUNCATE pgqueue.ready, pgqueue.runs, pgqueue.task_placement")
    tasks = {"plain": None, "req1": ("{gpu=a100}", "{}", 1)}
    for g in range(8):  # half the groups need a label the worker lacks
        tasks[f"req8_{g}"] = ("{gpu=a100,shard=" + str(g if g % 2 else "x") + "}" if g % 2 else "{gpu=a100}",
                              "{}", 1)
    tasks["pref"] = ("{}", "{gpu=h100}", 1)
    tasks["slots"] = ("{}", "{}", 3)
    for name, spec in tasks.items():
        if spec is not None:
            conn.execute("INSERT INTO pgqueue.task_placement (task, required_labels, preferred_labels, slots, "
                         "prefer_wait) VALUES (%s, %s, %s, %s, interval '1 hour')", (name, *spec))
    names = {"plain": ["plain"], "labelled": ["plain"], "req1": ["req1"],
             "req8": [f"req8_{g}" for g in range(8)], "pref": ["pref", "plain"], "slots": ["slots"]}[placement]
    # a worker with matching labels is alive, so preferred runs wait for it
    conn.execute("INSERT INTO pgqueue.workers (id, name, host, pid, queues, concurrency, lease_s, labels) "
                 "VALUES (gen_random_uuid(), 'h100', 'h', 1, '{bench}', 10, 3600, '{gpu=h100}')")
    for i, name in enumerate(names):
        conn.execute("SELECT pgqueue.enqueue_many(%s, array_fill('{}'::jsonb, ARRAY[%s]), queue => 'bench')",
                     (name, backlog // len(names) + (i < backlog % len(names))))
    conn.execute("VACUUM ANALYZE pgqueue.ready")


def median_claim_ms(conn: psycopg.Connection[Any], labels: list[str] | None) -> tuple[float, int]:
    times, taken = [], 0
    worker = uuid.uuid4()
    for _ in range(REPEATS):
        with conn.transaction(force_rollback=True):
            started = time.perf_counter()
            taken = conn.execute("SELECT count(*) FROM pgqueue.claim(%s, '{bench}', 10, 60, %s)",
                                 (worker, labels)).fetchone()[0]  # type: ignore[index]
            times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000, taken


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", help="existing server (default: a throwaway one)")
    parser.add_argument("--backlog", type=int, default=20_000)
    args = parser.parse_args()
    cases = [("plain", "plain", None), ("plain, labelled worker", "labelled", LABELS),
             ("required, 1 group", "req1", LABELS), ("required, 8 groups", "req8", LABELS),
             ("preferred elsewhere", "pref", LABELS), ("slots=3", "slots", LABELS)]
    with bench_server(args.dsn) as server, fresh_database(server, "placement") as dsn, \
            psycopg.connect(dsn, autocommit=True) as conn:
        for title, placement, labels in cases:
            fill(conn, args.backlog, placement)
            ms, taken = median_claim_ms(conn, labels)
            print(f"{title:<24} backlog {args.backlog:,}: claim of 10 slots {ms:.3f} ms (median of {REPEATS}), "
                  f"{taken} runs taken")


if __name__ == "__main__":
    main()
