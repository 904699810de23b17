"""The worker in-process: running, retries, timeouts, cancellation, expiry, leases and fencing."""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import psycopg
import pytest

from conftest import running_worker, wait_for
from pgqueue import RunFailed
from pgqueue.ops import execute_on
from pgqueue.sqlfiles import query
from pgqueue.worker.completer import complete_op
from pgqueue.worker.executor import Outcome

pytestmark = pytest.mark.timeout(120)


def attempts_of(dsn: str, run_id: int) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT attempt, outcome, error_type FROM pgqueue.attempts WHERE run_id = %s"
                            " ORDER BY attempt", (run_id,)).fetchall()


def run_row(dsn: str, run_id: int) -> dict[str, Any]:
    with psycopg.connect(dsn) as conn:
        cur = conn.execute("SELECT * FROM pgqueue.runs WHERE id = %s", (run_id,))
        names = [c.name for c in cur.description or []]
        row = cur.fetchone()
        assert row is not None
        return dict(zip(names, row, strict=True))


async def test_runs_async_and_sync_tasks_and_stores_results(worker_tasks: Any) -> None:
    records = [await worker_tasks.record.enqueue_async(n) for n in range(30)]
    flaky = await worker_tasks.flaky.enqueue_async(0)
    async with running_worker(worker_tasks.app, concurrency=8):
        assert [await h.result(timeout=20) for h in records] == list(range(30))
        assert await flaky.result(timeout=20) == 1


async def test_retries_back_off_then_succeed(worker_tasks: Any, dsn: str) -> None:
    handle = await worker_tasks.flaky.enqueue_async(2)
    async with running_worker(worker_tasks.app, poll_interval=0.02):
        assert await handle.result(timeout=20) == 3
    assert [(a, o) for a, o, _ in attempts_of(dsn, handle.id)] == [(1, "retry"), (2, "retry"), (3, "succeeded")]
    with psycopg.connect(dsn) as conn:
        starts = [r[0] for r in conn.execute(
            "SELECT started_at FROM executions WHERE run_id = %s ORDER BY attempt", (handle.id,))]
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(starts)]
    # Retry(initial_delay=0.2, factor=2, jitter=0): 0.2 s, then 0.4 s
    assert gaps[0] >= 0.19 and gaps[1] >= 0.39, gaps
    assert run_row(dsn, handle.id)["failures"] == 2


async def test_never_retry_errors_fail_at_once_with_traceback(worker_tasks: Any, dsn: str) -> None:
    handle = await worker_tasks.refuses.enqueue_async("this")
    async with running_worker(worker_tasks.app):
        with pytest.raises(RunFailed, match="ValueError: cannot handle 'this'"):
            await handle.result(timeout=20)
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT outcome, error_type, traceback FROM pgqueue.attempts WHERE run_id = %s",
                           (handle.id,)).fetchone()
    assert row is not None and row[:2] == ("failed", "ValueError") and "in refuses" in row[2]


async def test_retry_later_does_not_use_up_attempts(worker_tasks: Any, dsn: str) -> None:
    handle = await worker_tasks.throttled.enqueue_async(2)  # max_attempts=1, yet 3 tries
    async with running_worker(worker_tasks.app, poll_interval=0.05):
        assert await handle.result(timeout=20) == 3
    row = run_row(dsn, handle.id)
    assert (row["attempt"], row["failures"]) == (3, 0)
    assert [o for _, o, _ in attempts_of(dsn, handle.id)] == ["retry", "retry", "succeeded"]


async def test_async_timeout_cancels_and_retries_per_policy(worker_tasks: Any, dsn: str) -> None:
    handle = await worker_tasks.slow_async.enqueue_async(30)
    started = time.monotonic()
    async with running_worker(worker_tasks.app):
        with pytest.raises(RunFailed, match=r"TimeoutError: the attempt ran longer than the task's timeout of 0\.5s"):
            await handle.result(timeout=20)
    assert time.monotonic() - started < 10
    assert [o for _, o, _ in attempts_of(dsn, handle.id)] == ["timeout", "timeout"]


async def test_sync_timeout_fails_the_attempt_and_ignores_the_late_result(worker_tasks: Any, dsn: str) -> None:
    handle = await worker_tasks.slow_sync.enqueue_async(1.5)
    async with running_worker(worker_tasks.app):
        with pytest.raises(RunFailed, match=r"timeout of 0\.5s"):
            await handle.result(timeout=20)
        await asyncio.sleep(1.5)  # the thread returns now; its result must not be recorded
    row = run_row(dsn, handle.id)
    assert (row["status"], row["result"]) == ("failed", None)


async def test_schedule_to_start_expiry(worker_tasks: Any, dsn: str) -> None:
    @worker_tasks.app.task(schedule_to_start=0.2)
    async def urgent() -> str:
        return "too late?"

    handle = await urgent.enqueue_async()
    fresh = await urgent.enqueue_async()
    await asyncio.sleep(0.5)
    async with running_worker(worker_tasks.app):
        with pytest.raises(RunFailed, match="Expired"):
            await handle.result(timeout=20)
        with pytest.raises(RunFailed, match="Expired"):
            await fresh.result(timeout=20)
        in_time = await urgent.enqueue_async()
        assert await in_time.result(timeout=20) == "too late?"
    del worker_tasks.app.tasks["urgent"]


async def test_unknown_task_and_bad_stored_input_fail_clearly_without_blocking(worker_tasks: Any,
                                                                              dsn: str) -> None:
    unknown = worker_tasks.app.enqueue("no_such_task", {}, queue="default")  # named: accepted unregistered
    with psycopg.connect(dsn, autocommit=True) as conn:
        (bad_id,) = conn.execute("SELECT pgqueue.enqueue('record', '{\"n\": \"seven\"}')").fetchone()  # type: ignore[misc]
    after = await worker_tasks.record.enqueue_async(7)
    async with running_worker(worker_tasks.app):
        assert await after.result(timeout=20) == 7
        with pytest.raises(RunFailed, match="UnknownTask: this worker has no task named 'no_such_task'"):
            await worker_tasks.app.get_async_run(unknown.id).result(timeout=20)
        with pytest.raises(RunFailed, match=r"InvalidInput.*n: Input should be a valid integer"):
            await worker_tasks.app.get_async_run(bad_id).result(timeout=20)


async def test_cancel_queued_and_running_runs(worker_tasks: Any, dsn: str) -> None:
    queued = await worker_tasks.record.options(delay=60).enqueue_async(1)
    assert worker_tasks.app.cancel(queued.id) == "cancelled"
    sync_run = await worker_tasks.cancellable.enqueue_async(30)
    async_run = await worker_tasks.nap.enqueue_async(30)
    async with running_worker(worker_tasks.app):
        await wait_for(lambda: _all_running(dsn, [sync_run.id, async_run.id]), what="runs to start")
        assert worker_tasks.app.cancel(sync_run.id) == "cancel_requested"
        assert worker_tasks.app.cancel(async_run.id) == "cancel_requested"
        for handle in (sync_run, async_run):
            with pytest.raises(RunFailed, match="cancelled"):
                await handle.result(timeout=10)
    assert run_row(dsn, queued.id)["status"] == "cancelled"
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT count(*) FROM executions WHERE run_id = ANY(%s)",
                            ([queued.id, async_run.id],)).fetchone() == (0,)
    assert worker_tasks.app.cancel(queued.id) == "cancelled"  # finished runs are left as they are


async def _all_running(dsn: str, ids: list[int]) -> bool:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cur = await conn.execute("SELECT count(*) FROM pgqueue.runs WHERE id = ANY(%s) AND status = 'running'",
                                 (ids,))
        row = await cur.fetchone()
        return row is not None and row[0] == len(ids)


async def test_retry_a_failed_run(worker_tasks: Any, dsn: str) -> None:
    handle = await worker_tasks.refuses.enqueue_async("x")
    async with running_worker(worker_tasks.app):
        with pytest.raises(RunFailed):
            await handle.result(timeout=20)
        assert worker_tasks.app.retry(handle.id) == "queued"
        with pytest.raises(RunFailed):
            await handle.result(timeout=20)
    assert [a for a, _, _ in attempts_of(dsn, handle.id)] == [1, 2]
    with pytest.raises(Exception, match="only failed, cancelled or dead runs can be retried"):
        worker_tasks.app.retry((await worker_tasks.record.options(delay=60).enqueue_async(1)).id)


async def test_graceful_shutdown_finishes_or_hands_back(worker_tasks: Any, dsn: str) -> None:
    short = await worker_tasks.nap.enqueue_async(0.5)
    long = await worker_tasks.nap.enqueue_async(30)
    async with running_worker(worker_tasks.app, grace_period=1.5):
        await wait_for(lambda: _all_running(dsn, [short.id, long.id]), what="runs to start")
    assert run_row(dsn, short.id)["status"] == "succeeded"
    row = run_row(dsn, long.id)
    assert (row["status"], row["failures"], row["worker_id"]) == ("queued", 0, None)
    assert attempts_of(dsn, long.id) == [(1, "handed_back", None)]
    async with running_worker(worker_tasks.app):
        with psycopg.connect(dsn, autocommit=True) as conn:
            await wait_for(lambda: _all_running(dsn, [long.id]), what="the handed-back run to start again")
            conn.execute("SELECT pgqueue.cancel_run(%s)", (long.id,))


def test_zombie_cannot_record_after_its_lease_was_taken_over(dsn: str) -> None:
    """Worker A claims, goes silent; the run is rescued and claimed by B; A's late write is rejected."""
    a, b = "00000000-0000-0000-0000-00000000000a", "00000000-0000-0000-0000-00000000000b"
    with psycopg.connect(dsn, autocommit=True) as conn:
        (run_id,) = conn.execute("SELECT pgqueue.enqueue('zombie_demo', '{}', queue => 'zombies')").fetchone()  # type: ignore[misc]

        def claim(worker: str) -> list[tuple[Any, ...]]:
            return conn.execute(query("worker.claim"),  # type: ignore[arg-type]
                                {"queues": ["zombies"], "limit": 10, "worker": worker, "lease_s": 30,
                                 "labels": None}).fetchall()

        def complete(worker: str, attempt: int, result: str) -> list[tuple[Any, ...]]:
            outcome = Outcome(run_id, attempt, "succeeded", "succeeded", result=result)
            applied = execute_on(conn, complete_op(worker, [outcome]))
            return [(r.id, r.status, r.error_type, r.error_message) for r in applied.values()]

        assert [r[0] for r in claim(a)] == [run_id]
        conn.execute("UPDATE pgqueue.runs SET lease_expires_at = now() - interval '1 second' WHERE id = %s",
                     (run_id,))
        rescued = conn.execute(query("worker.rescue"), {"max_recoveries": 3}).fetchall()  # type: ignore[arg-type]
        assert rescued == [(run_id, "queued")]
        assert [r[3] for r in claim(b)] == [2]  # attempt 2, leased to B
        beat = conn.execute(query("worker.heartbeat"),  # type: ignore[arg-type]
                            {"worker": a, "lease_s": 30, "ids": [run_id], "attempts": [1]}).fetchall()
        assert beat == []  # A learns it lost the run
        assert complete(a, 1, '"from the zombie"') == []
        assert complete(b, 2, '"from B"') == [(run_id, "succeeded", None, None)]
        assert complete(b, 2, '"twice"') == []
        row = conn.execute("SELECT status, result, recoveries FROM pgqueue.runs WHERE id = %s", (run_id,)).fetchone()
        assert row == ("succeeded", "from B", 1)
        outcomes = conn.execute("SELECT attempt, outcome FROM pgqueue.attempts WHERE run_id = %s ORDER BY attempt",
                                (run_id,)).fetchall()
        assert outcomes == [(1, "crashed"), (2, "succeeded")]


def test_rescue_never_overwrites_a_finished_run_and_dead_letters_crash_loops(dsn: str) -> None:
    worker = "00000000-0000-0000-0000-0000000000cc"
    with psycopg.connect(dsn, autocommit=True) as conn:
        (run_id,) = conn.execute("SELECT pgqueue.enqueue('crashy', '{}', queue => 'crash')").fetchone()  # type: ignore[misc]
        statuses = []
        for _ in range(3):
            conn.execute(query("worker.claim"),  # type: ignore[arg-type]
                         {"queues": ["crash"], "limit": 1, "worker": worker, "lease_s": 30, "labels": None})
            conn.execute("UPDATE pgqueue.runs SET lease_expires_at = now() - interval '1 second' WHERE id = %s",
                         (run_id,))
            statuses += [s for i, s in conn.execute(query("worker.rescue"),  # type: ignore[arg-type]
                                                    {"max_recoveries": 2}).fetchall() if i == run_id]
        assert statuses == ["queued", "queued", "dead"]
        row = conn.execute("SELECT status, recoveries, failures, error->>'type' FROM pgqueue.runs WHERE id = %s",
                           (run_id,)).fetchone()
        assert row == ("dead", 3, 0, "CrashLoop")
        assert conn.execute("SELECT count(*) FROM pgqueue.ready WHERE run_id = %s", (run_id,)).fetchone() == (0,)
        # a finished run with a stale lease value is never touched by the rescuer
        (done_id,) = conn.execute("SELECT pgqueue.enqueue('crashy', '{}', queue => 'crash')").fetchone()  # type: ignore[misc]
        conn.execute("UPDATE pgqueue.runs SET status = 'succeeded', lease_expires_at = now() - interval '1 hour'"
                     " WHERE id = %s", (done_id,))
        assert all(i != done_id for i, _ in conn.execute(query("worker.rescue"),  # type: ignore[arg-type]
                                                         {"max_recoveries": 2}).fetchall())
        assert conn.execute("SELECT status FROM pgqueue.runs WHERE id = %s", (done_id,)).fetchone() == ("succeeded",)


async def test_paused_queue_keeps_its_runs_until_resumed(worker_tasks: Any, dsn: str) -> None:
    worker_tasks.app.pause_queue("default")
    held = await worker_tasks.record.enqueue_async(11)
    other = await worker_tasks.record.options(queue="other").enqueue_async(12)
    async with running_worker(worker_tasks.app, queues=["default", "other"]):
        assert await other.result(timeout=20) == 12  # other queues keep going
        await asyncio.sleep(1.0)
        assert await held.status() == "queued"
        from pgqueue.queues import status_op

        queues, _ = worker_tasks.app.db.execute(status_op())
        assert [(q.queue, q.queued, q.paused) for q in queues if q.queue == "default"] == [("default", 1, True)]
        worker_tasks.app.resume_queue("default")
        assert await held.result(timeout=20) == 11


async def test_task_logs_are_kept_per_attempt_and_bounded(worker_tasks: Any, dsn: str) -> None:
    small = await worker_tasks.chatty.enqueue_async(3)
    big = await worker_tasks.chatty.enqueue_async(2000)
    async with running_worker(worker_tasks.app, poll_interval=0.05):
        assert await small.result(timeout=20) == 3
        assert await big.result(timeout=20) == 2000
    with psycopg.connect(dsn) as conn:
        logs = [r[0] for r in conn.execute("SELECT logs FROM pgqueue.attempts WHERE run_id = %s ORDER BY attempt",
                                           (small.id,))]
        big_logs = conn.execute("SELECT logs FROM pgqueue.attempts WHERE run_id = %s AND attempt = 2",
                                (big.id,)).fetchone()
    assert "starting attempt 1" in logs[0] and "starting attempt 2" in logs[1]
    assert logs[0].count("some.library: line") == 3 and "starting attempt 2" not in logs[0]
    assert big_logs is not None and len(big_logs[0].encode()) <= 64 * 1024 + 100
    assert "more bytes of logs dropped" in big_logs[0]


async def test_heartbeats_hold_the_latest_attempt_of_a_run_held_twice(worker_tasks: Any) -> None:
    """An attempt's outcome still waiting to be written (the database was away) and a later
    attempt of the same run, claimed again after a rescue: the heartbeat extends the later one,
    whose lease it is (beating the earlier would lose the run running now)."""
    from pgqueue.context import RunContext
    from pgqueue.worker import Worker
    from pgqueue.worker.claimer import Claimed
    from pgqueue.worker.worker import _Running

    worker = Worker(worker_tasks.app)
    worker._completer.add(Outcome(7, 2, "queued", "interrupted"))
    idle = asyncio.create_task(asyncio.sleep(0))
    worker._running[7] = _Running(Claimed(7, "record", "{}", 3, 1, False), RunContext(7, "record", 3, worker.id),
                                  idle)
    worker._ahead.hold([Claimed(9, "record", "{}", 1, 0, False)])
    assert worker._held() == ([7, 9], [3, 1])
    await idle
