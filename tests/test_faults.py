"""Faults: engine signals a broad except cannot swallow, bounded retry-later, deadlines and
heartbeats, infrastructure failures counted apart, and gathers of large fan-outs."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from conftest import bind, running_worker, wait_for

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
