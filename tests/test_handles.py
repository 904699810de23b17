"""Run handles: status and waiting for the result without busy polling."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest

from pgqueue import PgQueue, RunFailed, RunNotFound


def finish_later(dsn: str, run_id: int, status: str, result: str | None, error: str | None,
                 after: float = 0.3) -> threading.Thread:
    """Stand-in for a worker: records an outcome and signals it the way workers do."""
    def finish() -> None:
        time.sleep(after)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("UPDATE pgqueue.runs SET status = %s, result = %s::jsonb, error = %s::jsonb,"
                         " finished_at = now() WHERE id = %s", (status, result, error, run_id))
            conn.execute("SELECT pg_notify('pgqueue_done', '')")
    thread = threading.Thread(target=finish)
    thread.start()
    return thread


def test_result_waits_for_the_outcome(app: PgQueue, dsn: str) -> None:
    @app.task
    def double(x: int) -> list[int]:
        return [x, x]

    handle = double.enqueue(3)
    assert handle.status() == "queued"
    thread = finish_later(dsn, handle.id, "succeeded", "[3, 3]", None)
    started = time.monotonic()
    assert handle.result(timeout=10) == [3, 3]
    assert time.monotonic() - started < 5
    thread.join()


def test_failed_run_raises_with_its_error(app: PgQueue, dsn: str) -> None:
    handle = app.enqueue("boom", {}, queue="default")
    finish_later(dsn, handle.id, "failed", None, '{"type": "ValueError", "message": "bad"}', 0.1).join()
    with pytest.raises(RunFailed, match="ended failed: ValueError: bad") as caught:
        handle.result(timeout=5)
    assert caught.value.status == "failed"


def test_result_times_out(app: PgQueue) -> None:
    handle = app.enqueue("never", {}, queue="default")
    with pytest.raises(TimeoutError):
        handle.result(timeout=0.3)


async def test_async_result(async_app: PgQueue, dsn: str) -> None:
    @async_app.task
    async def shout(text: str) -> str:
        return text.upper()

    handle = await shout.enqueue_async("hi")
    thread = finish_later(dsn, handle.id, "succeeded", '"HI"', None)
    assert await handle.result(timeout=10) == "HI"
    thread.join()


def test_unknown_run(app: PgQueue) -> None:
    with pytest.raises(RunNotFound, match="no run with id 987654321"):
        app.get_run(987654321).status()
