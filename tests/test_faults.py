"""Faults: engine signals a broad except cannot swallow, bounded retry-later, deadlines and
heartbeats, infrastructure failures counted apart, and gathers of large fan-outs."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from conftest import bind, running_worker, wait_for
from pgqueue.ops import execute_on
from pgqueue.sqlfiles import query
from pgqueue.worker.completer import complete_op
from pgqueue.worker.executor import Outcome

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def faults(dsn: str) -> Iterator[Any]:
    import faults_app

    bind(faults_app.app, dsn)
    faults_app.reset()
    yield faults_app
    bind(faults_app.app, None)


def run_row(dsn: str, run_id: int) -> dict[str, Any]:
    with psycopg.connect(dsn) as conn:
        cur = conn.execute("SELECT * FROM pgqueue.runs WHERE id = %s", (run_id,))
        names = [c.name for c in cur.description or []]
        row = cur.fetchone()
        assert row is not None
        return dict(zip(names, row, strict=True))


def outcomes(dsn: str, run_id: int) -> list[str]:
    with psycopg.connect(dsn) as conn:
        return [r[0] for r in conn.execute(
            "SELECT outcome FROM pgqueue.attempts WHERE run_id = %s ORDER BY attempt", (run_id,))]


async def test_a_broad_except_around_a_step_sees_its_failure_only_once_its_retries_are_spent(
        faults: Any, dsn: str) -> None:
    handle = await faults.with_fallback.enqueue_async()
    async with running_worker(faults.app, poll_interval=0.05):
        assert await handle.result(timeout=30) == "fallback"
    assert faults.CALLS["llm"] == 3  # the step's policy applied: three calls, then the fallback
    assert outcomes(dsn, handle.id) == ["retry", "retry", "succeeded"]
    assert run_row(dsn, handle.id)["failures"] == 0


async def test_a_sync_task_catching_exception_around_raise_if_cancelled_still_ends_cancelled(
        faults: Any, dsn: str) -> None:
    handle = await faults.cancellable_sync.enqueue_async()
    async with running_worker(faults.app, poll_interval=0.05):
        await wait_for(lambda: asyncio.to_thread(faults.STARTED.wait, 0.05), what="the sync task to start")
        await asyncio.to_thread(faults.app.cancel, handle.id)
        await wait_for(lambda: asyncio.to_thread(lambda: run_row(dsn, handle.id)["status"] == "cancelled"),
                       what="the run to end cancelled")
    assert faults.CALLS["swallowed"] == 0


async def test_retry_later_for_ever_fails_once_the_tasks_cap_is_reached(faults: Any, dsn: str) -> None:
    handle = await faults.always_later.enqueue_async()
    async with running_worker(faults.app, poll_interval=0.05):
        await wait_for(lambda: asyncio.to_thread(lambda: run_row(dsn, handle.id)["status"] == "failed"),
                       what="the run to fail")
    row = run_row(dsn, handle.id)
    assert faults.CALLS["later"] == 4  # three requests allowed in a row, the fourth ends the run
    assert row["error"]["type"] == "RetryLaterLimit"
    assert "max_retry_later" in row["error"]["message"] and "4 times in a row" in row["error"]["message"]
    assert row["failures"] == 0 and row["retry_laters"] == 4
    assert outcomes(dsn, handle.id) == ["retry", "retry", "retry", "failed"]
    assert await asyncio.to_thread(faults.app.retry, handle.id) == "queued"  # a fresh budget
    assert run_row(dsn, handle.id)["retry_laters"] == 0


async def test_a_backend_terminated_during_a_step_does_not_use_up_the_tasks_attempts(
        faults: Any, dsn: str) -> None:
    handle = await faults.cut_off.enqueue_async()
    async with running_worker(faults.app, poll_interval=0.05):
        await wait_for(lambda: asyncio.to_thread(faults.STARTED.wait, 0.05), what="the step to start")
        [pid] = faults.BACKENDS
        with psycopg.connect(dsn, autocommit=True) as conn:
            assert conn.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone() == (True,)

            def gone() -> bool:
                return conn.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s",
                                    (pid,)).fetchone() == (0,)
            await wait_for(lambda: asyncio.to_thread(gone), what="the backend to end")
        faults.RESUME.set()  # the step's checkpoint now meets the dead connection
        assert await handle.result(timeout=30) == "written"
    row = run_row(dsn, handle.id)
    assert (row["failures"], row["interruptions"]) == (0, 1)
    assert outcomes(dsn, handle.id) == ["interrupted", "succeeded"]
    assert faults.CALLS["write"] == 2  # its transaction rolled back: the step ran again


async def test_a_hung_async_call_fails_its_attempt_after_the_heartbeat_timeout_and_is_retried(
        faults: Any, dsn: str) -> None:
    handle = await faults.hung_async.enqueue_async()
    async with running_worker(faults.app, poll_interval=0.05):
        assert await handle.result(timeout=30) == "answered"
    assert outcomes(dsn, handle.id) == ["heartbeat_timeout", "succeeded"]
    assert run_row(dsn, handle.id)["failures"] == 1  # a failure of the task: the policy applies
    with psycopg.connect(dsn) as conn:
        message = conn.execute("SELECT error_message FROM pgqueue.attempts WHERE run_id = %s AND attempt = 1",
                               (handle.id,)).fetchone()
    assert message is not None and "heartbeat_timeout of 1s" in message[0]


async def test_a_hung_sync_call_fails_its_attempt_and_is_asked_to_stop(faults: Any, dsn: str) -> None:
    handle = await faults.hung_sync.enqueue_async()
    async with running_worker(faults.app, poll_interval=0.05):
        assert await handle.result(timeout=30) == "answered"
        await wait_for(lambda: asyncio.to_thread(lambda: faults.CALLS["hung_sync_stopped"] == 1),
                       what="the hung thread to see the stop request")
    assert outcomes(dsn, handle.id) == ["heartbeat_timeout", "succeeded"]


async def test_no_retry_starts_past_the_runs_deadline(faults: Any, dsn: str) -> None:
    handle = await faults.never_works.enqueue_async()
    async with running_worker(faults.app, poll_interval=0.05):
        await wait_for(lambda: asyncio.to_thread(lambda: run_row(dsn, handle.id)["status"] == "failed"),
                       what="the run to fail")
    row = run_row(dsn, handle.id)
    assert row["error"]["type"] == "DeadlineExceeded"
    # no attempt starts at or after the deadline (the last one may still be running when it
    # passes on a loaded machine: then the expirer fails it, which is right too)
    with psycopg.connect(dsn) as conn:
        [(late_starts,)] = conn.execute("SELECT count(*) FROM pgqueue.attempts WHERE run_id = %s "
                                        "AND started_at >= %s", (handle.id, row["deadline_at"])).fetchall()
    assert late_starts == 0
    # 1.5 s, retries every 0.2 s: a handful of attempts, then none once the next would start late
    assert 2 <= faults.CALLS["never_works"] <= 8
    assert row["attempt"] == faults.CALLS["never_works"]
    assert await asyncio.to_thread(faults.app.retry, handle.id) == "queued"  # with a fresh deadline
    assert run_row(dsn, handle.id)["deadline_at"] > row["deadline_at"]


async def test_a_running_attempt_past_the_deadline_is_failed_and_a_late_queued_run_never_starts(
        faults: Any, dsn: str) -> None:
    running = await faults.hangs_past_deadline.enqueue_async()
    async with running_worker(faults.app, poll_interval=0.05):
        await wait_for(lambda: asyncio.to_thread(lambda: run_row(dsn, running.id)["status"] == "failed"),
                       what="the hung run to fail for its deadline")
    assert run_row(dsn, running.id)["error"]["type"] == "DeadlineExceeded"
    assert outcomes(dsn, running.id) == ["timeout"]
    assert faults.CALLS["hangs"] == 1
    # enqueued while no worker runs; its deadline passes before any worker sees it
    late = await faults.hangs_past_deadline.enqueue_async()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("UPDATE pgqueue.runs SET deadline_at = now() WHERE id = %s", (late.id,))
    async with running_worker(faults.app, poll_interval=0.05):
        await wait_for(lambda: asyncio.to_thread(lambda: run_row(dsn, late.id)["status"] == "failed"),
                       what="the late run to fail")
    assert faults.CALLS["hangs"] == 1 and outcomes(dsn, late.id) == []
    assert run_row(dsn, late.id)["attempt"] == 0


async def test_the_worker_names_tasks_without_a_timeout_at_start(faults: Any,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="pgqueue.worker"):
        async with running_worker(faults.app):
            pass
    [warning] = [r.getMessage() for r in caplog.records if "without a start-to-close timeout" in r.getMessage()]
    assert "always_later" in warning and "with_fallback" in warning
    assert "hung_async" not in warning and "hangs_past_deadline" not in warning


async def test_gather_returns_each_childs_outcome_with_return_exceptions(faults: Any, dsn: str) -> None:
    handle = await faults.fan_out_outcomes.enqueue_async([3, -1, 4])
    async with running_worker(faults.app, poll_interval=0.05):
        outcomes = await handle.result(timeout=30)
    with psycopg.connect(dsn) as conn:
        ids = [r[0] for r in conn.execute("SELECT id FROM pgqueue.runs WHERE parent_id = %s ORDER BY id",
                                          (handle.id,))]
    assert outcomes == [9, {"run": ids[1], "status": "failed", "type": "ValueError"}, 16]


@pytest.mark.slow
@pytest.mark.timeout(900)  # 59 s alone on the 2-core machine; several times that when it is shared
async def test_gather_of_100000_children_with_small_results(faults: Any, dsn: str) -> None:
    count = 100_000
    handle = await faults.fan_out.enqueue_async(count)
    async with running_worker(faults.app, poll_interval=0.05, concurrency=100, lease=30.0, heartbeat=5.0):
        assert await handle.result(timeout=900) == {"gathered": count, "wrong": 0}
    with psycopg.connect(dsn) as conn:
        output = conn.execute("SELECT output FROM pgqueue.steps WHERE run_id = %s AND step_key = 'gather#0'",
                              (handle.id,)).fetchone()
    assert output is not None and output[0]["children"] == count  # not 100,000 results in one step


def _complete_one(conn: psycopg.Connection[Any], worker: str, run_id: int, attempt: int, *,
                  interrupted: int = 0, retry_later: int = 0, cap: int = 0, delay: float = 0.0) -> list[Any]:
    """worker.complete for one run whose attempt asks for a retry (status 'queued')."""
    outcome = Outcome(run_id, attempt, "queued", "interrupted" if interrupted else "retry",
                      error={"type": "DatabaseInterrupted", "message": "cut off"}, delay=delay,
                      retry_later=retry_later, retry_later_cap=cap, interrupted=interrupted)
    return [(applied,) for applied in execute_on(conn, complete_op(worker, [outcome], max_interruptions=2))]


def _claim(conn: psycopg.Connection[Any], worker: str, queue: str) -> list[Any]:
    return conn.execute(query("worker.claim"),
                        {"queues": [queue], "limit": 1, "worker": worker, "lease_s": 30, "labels": None}).fetchall()


def test_interrupted_attempts_are_bounded_by_max_interruptions(dsn: str) -> None:
    worker = "00000000-0000-0000-0000-0000000000c1"
    with psycopg.connect(dsn, autocommit=True) as conn:
        (run_id,) = conn.execute("SELECT pgqueue.enqueue('outage_demo', '{}', queue => 'outages')").fetchone()  # type: ignore[misc]
        for attempt in (1, 2, 3):
            conn.execute("UPDATE pgqueue.runs SET run_at = now() WHERE id = %s", (run_id,))
            conn.execute("UPDATE pgqueue.ready SET run_at = now() WHERE run_id = %s", (run_id,))
            assert [r[3] for r in _claim(conn, worker, "outages")] == [attempt]
            assert _complete_one(conn, worker, run_id, attempt, interrupted=1) == [(run_id,)]
        row = run_row(dsn, run_id)
    assert (row["status"], row["failures"], row["interruptions"]) == ("failed", 0, 3)
    assert row["error"]["type"] == "InfrastructureFailure" and "max_interruptions of 2" in row["error"]["message"]
    assert outcomes(dsn, run_id) == ["interrupted", "interrupted", "interrupted"]


def test_a_retry_later_past_the_schedule_to_start_window_fails_as_expired(dsn: str) -> None:
    worker = "00000000-0000-0000-0000-0000000000c2"
    with psycopg.connect(dsn, autocommit=True) as conn:
        (run_id,) = conn.execute(  # type: ignore[misc]
            "SELECT pgqueue.enqueue('late_demo', '{}', queue => 'late', schedule_to_start => '10 seconds')"
        ).fetchone()
        assert len(_claim(conn, worker, "late")) == 1
        assert _complete_one(conn, worker, run_id, 1, retry_later=1, cap=100, delay=60) == [(run_id,)]
        row = run_row(dsn, run_id)
    assert (row["status"], row["error"]["type"]) == ("failed", "Expired")
    assert "schedule_to_start" in row["error"]["message"]


async def test_the_deadline_comes_from_the_task_the_enqueue_option_or_the_registration(
        faults: Any, dsn: str) -> None:
    def seconds(run_id: int) -> float | None:
        row = run_row(dsn, run_id)
        return None if row["deadline_at"] is None else (row["deadline_at"] - row["created_at"]).total_seconds()

    from_task = await faults.never_works.enqueue_async()
    from_option = await faults.never_works.options(deadline=30).enqueue_async()
    none = await faults.child.enqueue_async(1)
    assert (seconds(from_task.id), seconds(from_option.id), seconds(none.id)) == (1.5, 30.0, None)
    await asyncio.to_thread(faults.app.register_tasks)
    with psycopg.connect(dsn, autocommit=True) as conn:
        (from_sql,) = conn.execute("SELECT pgqueue.enqueue('never_works', '{}')").fetchone()  # type: ignore[misc]
        (sql_option,) = conn.execute(  # type: ignore[misc]
            "SELECT pgqueue.enqueue('child', '{\"n\": 2}', deadline => '5 seconds')").fetchone()
    assert (seconds(from_sql), seconds(sql_option)) == (1.5, 5.0)
    for run_id in (from_task.id, from_option.id, none.id, from_sql, sql_option):  # not for later tests
        await asyncio.to_thread(faults.app.cancel, run_id)
