"""Placement of runs on workers: required and preferred labels, slot cost, sticky runs, version
pinning (pgqueue/placement.py, sql/functions/placement.sql). Invariants are checked over the
recorded history (attempts and their workers), never over what the code meant to do."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

from conftest import bind, running_worker, wait_for
from pgqueue import PgQueue, Retry
from pgqueue.errors import ConfigurationError, TaskDefinitionError
from pgqueue.placement import MAX_LABELS, parse_labels
from pgqueue.worker import Worker, WorkerSettings
from pgqueue_cli.main import main as cli

pytestmark = pytest.mark.timeout(300)

app = PgQueue()
#: (run id, worker, start, end) of the runs of `heavy` and `light`, to check slot use
intervals: list[tuple[str, float, float, int]] = []
first_attempts: set[int] = set()


@app.task(queue="placed")
async def plain(i: int) -> None:
    pass


@app.task(queue="placed", required_labels={"gpu": "a100"})
async def on_gpu(i: int) -> None:
    pass


@app.task(queue="placed", required_labels={"model": "llama3"})
async def on_llama(i: int) -> None:
    pass


@app.task(queue="placed", required_labels={"gpu": "a100", "model": "llama3"})
async def on_both(i: int) -> None:
    pass


@app.task(queue="prefer", preferred_labels={"gpu": "h100"}, prefer_wait=30)
async def prefers_h100(i: int) -> None:
    await asyncio.sleep(0.005)


@app.task(queue="sticky", sticky=True, prefer_wait=30, retry=Retry(max_attempts=3, initial_delay=0.05, jitter=0))
async def warm(i: int) -> None:
    from pgqueue import current_run
    if current_run().attempt == 1:
        raise ValueError("first attempt fails: the retry should come back to this worker")


@app.task(queue="pinned", pin_version=True, retry=Retry(max_attempts=3, initial_delay=0.5, jitter=0))
async def pinned(i: int) -> None:
    from pgqueue import current_run
    if current_run().attempt == 1:
        raise ValueError("fails once, so that the run goes back to the queue after it started")


@app.task(queue="slots", slots=3)
async def heavy(i: int) -> None:
    from pgqueue import current_run
    run = current_run()
    started = time.monotonic()
    await asyncio.sleep(0.02)
    intervals.append((run.worker_id, started, time.monotonic(), 3))


@app.task(queue="slots")
async def light(i: int) -> None:
    from pgqueue import current_run
    run = current_run()
    started = time.monotonic()
    await asyncio.sleep(0.01)
    intervals.append((run.worker_id, started, time.monotonic(), 1))


@pytest.fixture
def placed(dsn: str) -> Iterator[PgQueue]:
    bind(app, dsn)
    yield app
    bind(app, None)


def _register(conn: psycopg.Connection[Any]) -> None:
    from pgqueue.ops import execute_on
    execute_on(conn, app.registry.register_op())


# -- bad input ---------------------------------------------------------------------------------

def test_bad_labels_are_refused_clearly() -> None:
    with pytest.raises(ConfigurationError, match="has no value: write it name=value"):
        parse_labels(["gpu"])
    with pytest.raises(ConfigurationError, match="label name '' is not valid"):
        parse_labels(["=a100"])
    with pytest.raises(ConfigurationError, match="the value '' of label 'gpu' is not valid"):
        parse_labels(["gpu="])
    with pytest.raises(ConfigurationError, match="given twice"):
        parse_labels(["gpu=a100", "gpu=h100"])
    with pytest.raises(ConfigurationError, match=f"over the limit of {MAX_LABELS}"):
        parse_labels([f"l{i}=x" for i in range(MAX_LABELS + 1)])
    with pytest.raises(ConfigurationError, match="label name '@worker' is not valid"):
        WorkerSettings(labels={"@worker": "x"})
    with pytest.raises(ConfigurationError, match="worker version 'v 1' is not valid"):
        WorkerSettings(version="v 1")
    assert parse_labels(["gpu=a100", "model=llama3"]) == {"gpu": "a100", "model": "llama3"}


def test_bad_task_placement_is_refused_at_declaration() -> None:
    local = PgQueue()
    with pytest.raises(TaskDefinitionError, match="slots must be a whole number from 1"):
        local.task(name="t0", slots=0)(lambda: None)
    with pytest.raises(TaskDefinitionError, match="required_labels: label name 'g pu' is not valid"):
        local.task(name="t1", required_labels={"g pu": "x"})(lambda: None)
    with pytest.raises(TaskDefinitionError, match="preferred_labels take a mapping"):
        local.task(name="t2", preferred_labels=["gpu=a100"])(lambda: None)  # type: ignore[arg-type]
    with pytest.raises(TaskDefinitionError, match="prefer_wait must be seconds"):
        local.task(name="t3", prefer_wait=-1)(lambda: None)


def test_a_task_needing_more_slots_than_the_worker_has_is_refused_at_start() -> None:
    with pytest.raises(ConfigurationError, match=r"this worker has 2 slots .* heavy \(3 slots\)"):
        Worker(app, WorkerSettings(concurrency=2))
    Worker(app, WorkerSettings(concurrency=3))


def test_the_cli_refuses_a_label_without_value() -> None:
    result = CliRunner().invoke(cli, ["worker", "test_placement:app", "--label", "gpu"])
    assert result.exit_code == 2
    assert "has no value: write it name=value" in result.output


# -- the claim, step by step -------------------------------------------------------------------

def _claim(conn: psycopg.Connection[Any], queue: str, labels: list[str] | None, n: int = 10,
           worker: uuid.UUID | None = None) -> list[int]:
    rows = conn.execute("SELECT id FROM pgqueue.claim(%s, %s, %s, 30, %s)",
                        (worker or uuid.uuid4(), [queue], n, labels)).fetchall()
    return sorted(r[0] for r in rows)


def test_plain_sql_enqueues_carry_the_placement_and_the_claim_matches_it(placed: PgQueue,
                                                                          conn: psycopg.Connection[Any]) -> None:
    _register(conn)
    conn.execute("DELETE FROM pgqueue.ready WHERE queue = 'placed'")
    gpu = conn.execute("SELECT pgqueue.enqueue('on_gpu', '{\"i\": 1}')").fetchone()[0]  # type: ignore[index]
    both = conn.execute("SELECT pgqueue.enqueue('on_both', '{\"i\": 2}')").fetchone()[0]  # type: ignore[index]
    free = conn.execute("SELECT pgqueue.enqueue('plain', '{\"i\": 3}')").fetchone()[0]  # type: ignore[index]
    needs = dict(conn.execute("SELECT run_id, needs FROM pgqueue.ready WHERE queue = 'placed'").fetchall())
    assert needs == {gpu: ["gpu=a100"], both: ["gpu=a100", "model=llama3"], free: None}
    assert _claim(conn, "placed", None) == [free]  # a worker without labels takes only the plain run
    assert _claim(conn, "placed", ["model=llama3"]) == []
    assert _claim(conn, "placed", ["gpu=a100"]) == [gpu]
    assert _claim(conn, "placed", ["gpu=a100", "model=llama3", "zone=eu"]) == [both]


def test_the_claim_takes_only_what_fits_the_free_slots(placed: PgQueue, conn: psycopg.Connection[Any]) -> None:
    _register(conn)
    conn.execute("DELETE FROM pgqueue.ready WHERE queue = 'slots'")
    heavy_ids = [heavy.enqueue(i).id for i in range(3)]
    light_ids = [light.enqueue(i).id for i in range(3)]
    assert _claim(conn, "slots", None, n=2) == light_ids[:2]  # no 3-slot run fits in 2 slots
    taken = _claim(conn, "slots", None, n=4)
    assert taken == [heavy_ids[0], light_ids[2]]  # 3 + 1 slots
    assert _claim(conn, "slots", None, n=3) == [heavy_ids[1]]


# -- workers -----------------------------------------------------------------------------------

async def _drained(conn: psycopg.AsyncConnection[Any], queue: str) -> bool:
    cur = await conn.execute("SELECT count(*) FROM pgqueue.runs WHERE queue = %s AND status IN ('queued', 'running')",
                             (queue,))
    row = await cur.fetchone()
    return row is not None and row[0] == 0


async def test_required_labels_are_never_violated_over_10000_runs(placed: PgQueue, dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as sync:
        _register(sync)  # what the first worker of the deploy does before the runs come
    tasks = [plain, on_gpu, on_llama, on_both]
    for task in tasks:
        task.enqueue_many([{"i": i} for i in range(2500)])
    fleet = [{"gpu": "a100", "model": "llama3"}, {"gpu": "a100"}, {"model": "llama3"}, {}]
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        async with running_worker(placed, queues=["placed"], labels=fleet[0], concurrency=10), \
                running_worker(placed, queues=["placed"], labels=fleet[1], concurrency=10), \
                running_worker(placed, queues=["placed"], labels=fleet[2], concurrency=10), \
                running_worker(placed, queues=["placed"], labels=fleet[3], concurrency=10):
            await wait_for(lambda: _drained(conn, "placed"), timeout=240, what="10,000 runs")
        cur = await conn.execute("""
            SELECT count(*) FILTER (WHERE NOT coalesce(p.required_labels, '{}') <@ w.labels),
                   count(*), count(DISTINCT a.run_id)
              FROM pgqueue.attempts a JOIN pgqueue.runs r ON r.id = a.run_id
              JOIN pgqueue.workers w ON w.id = a.worker_id
              LEFT JOIN pgqueue.task_placement p ON p.task = r.task
             WHERE r.queue = 'placed'""")
        violations, attempts, runs = await cur.fetchone()  # type: ignore[misc]
        cur = await conn.execute("""
            SELECT w.labels::text, count(*) FROM pgqueue.attempts a JOIN pgqueue.workers w ON w.id = a.worker_id
              JOIN pgqueue.runs r ON r.id = a.run_id WHERE r.queue = 'placed' GROUP BY 1 ORDER BY 1""")
        print("\nruns per worker labels:", await cur.fetchall())
    print(f"required labels: {violations} violations over {attempts} attempts of {runs} runs, four workers")
    assert runs >= 10000 and violations == 0


async def test_preferred_runs_go_to_the_matching_worker_first(placed: PgQueue, dsn: str) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        async with running_worker(placed, queues=["prefer"], labels={"gpu": "h100"}, concurrency=5) as h100, \
                running_worker(placed, queues=["prefer"], concurrency=5):
            prefers_h100.enqueue_many([{"i": i} for i in range(300)])
            await wait_for(lambda: _drained(conn, "prefer"), timeout=120, what="preferred runs")
        cur = await conn.execute("""
            SELECT count(*) FILTER (WHERE a.worker_id = %s), count(*) FROM pgqueue.attempts a
              JOIN pgqueue.runs r ON r.id = a.run_id WHERE r.queue = 'prefer'""", (h100.id,))
        on_preferred, total = await cur.fetchone()  # type: ignore[misc]
        print(f"\npreferred labels: {on_preferred}/{total} runs ({on_preferred / total:.1%}) on the preferred "
              "worker, another idle worker beside it")
        assert on_preferred == total
        # no preferred worker alive: another worker takes them at once, not after prefer_wait (30 s)
        async with running_worker(placed, queues=["prefer"], concurrency=5):
            started = time.monotonic()
            prefers_h100.enqueue_many([{"i": i} for i in range(20)])
            await wait_for(lambda: _drained(conn, "prefer"), timeout=20, what="fallback")
            assert time.monotonic() - started < 20


async def test_sticky_runs_come_back_to_their_worker(placed: PgQueue, dsn: str) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        async with running_worker(placed, queues=["sticky"], concurrency=4), \
                running_worker(placed, queues=["sticky"], concurrency=4):
            warm.enqueue_many([{"i": i} for i in range(200)])
            await wait_for(lambda: _drained(conn, "sticky"), timeout=120, what="sticky runs")
        cur = await conn.execute("""
            SELECT count(*) FILTER (WHERE a1.worker_id = a2.worker_id), count(*)
              FROM pgqueue.attempts a1 JOIN pgqueue.attempts a2 ON a2.run_id = a1.run_id AND a2.attempt = 2
              JOIN pgqueue.runs r ON r.id = a1.run_id WHERE r.queue = 'sticky' AND a1.attempt = 1""")
        same, total = await cur.fetchone()  # type: ignore[misc]
    print(f"\nsticky runs: {same}/{total} retries ({same / total:.1%}) on the worker of the first attempt, "
          "two workers")
    assert total == 200 and same == total


async def test_pinned_runs_stay_on_the_version_that_started_them(placed: PgQueue, dsn: str) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        async def all_failed_once() -> bool:
            cur = await conn.execute("SELECT count(*) FROM pgqueue.runs WHERE queue = 'pinned' AND failures = 1")
            row = await cur.fetchone()
            return row is not None and row[0] == 50

        async with running_worker(placed, queues=["pinned"], version="v1", concurrency=10) as old:
            pinned.enqueue_many([{"i": i} for i in range(50)])
            await wait_for(all_failed_once, timeout=60, what="the first attempts, on v1")
            # the deploy: a v2 worker starts beside v1, while the old runs wait for their retry
            async with running_worker(placed, queues=["pinned"], version="v2", concurrency=10) as new:
                pinned.enqueue_many([{"i": i} for i in range(50, 100)])
                await wait_for(lambda: _drained(conn, "pinned"), timeout=120, what="pinned runs")
        cur = await conn.execute("""
            SELECT count(*) FILTER (WHERE w.version <> w1.version), count(*),
                   count(*) FILTER (WHERE a.worker_id = %s), count(*) FILTER (WHERE a.worker_id = %s)
              FROM pgqueue.attempts a JOIN pgqueue.runs r ON r.id = a.run_id
              JOIN pgqueue.attempts a1 ON a1.run_id = a.run_id AND a1.attempt = 1
              JOIN pgqueue.workers w ON w.id = a.worker_id JOIN pgqueue.workers w1 ON w1.id = a1.worker_id
             WHERE r.queue = 'pinned'""", (old.id, new.id))
        violations, attempts, on_old, on_new = await cur.fetchone()  # type: ignore[misc]
    print(f"\nversion pinning: {violations} attempts on another version than the run's first, of {attempts}; "
          f"v1 ran {on_old}, v2 ran {on_new}")
    assert attempts == 200 and violations == 0


async def test_slot_cost_is_never_exceeded(placed: PgQueue, dsn: str) -> None:
    intervals.clear()
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute("DELETE FROM pgqueue.ready WHERE queue = 'slots'")
        await conn.execute("UPDATE pgqueue.runs SET status = 'cancelled' WHERE queue = 'slots' "
                           "AND status <> 'succeeded'")
        async with running_worker(placed, queues=["slots"], concurrency=4) as worker:
            heavy.enqueue_many([{"i": i} for i in range(40)])
            light.enqueue_many([{"i": i} for i in range(120)])
            await wait_for(lambda: _drained(conn, "slots"), timeout=120, what="slot runs")
    mine = [(start, end, slots) for worker_id, start, end, slots in intervals if worker_id == worker.id]
    events = sorted([(start, slots) for start, _, slots in mine] + [(end, -slots) for _, end, slots in mine],
                    key=lambda e: (e[0], e[1]))  # an end before a start at the same instant
    in_use = peak = 0
    for _, change in events:
        in_use += change
        peak = max(peak, in_use)
    print(f"\nslot cost: {len(mine)} runs (3-slot and 1-slot), at most {peak} of 4 slots in use at once")
    assert len(mine) == 160 and peak <= 4


async def test_status_shows_the_labels_and_version_of_workers(placed: PgQueue, dsn: str) -> None:
    async with running_worker(placed, queues=["placed"], labels={"gpu": "a100", "model": "llama3"}, version="v7"):
        result = await asyncio.to_thread(CliRunner().invoke, cli, ["status", "--dsn", dsn])
    assert result.exit_code == 0, result.output
    row = next(line for line in result.output.splitlines() if "gpu=a100" in line)
    assert "model=llama3" in row and "v7" in row
