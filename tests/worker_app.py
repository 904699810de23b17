"""Tasks for the worker tests; each records its executions in the `executions` table."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time

import psycopg

from pgqueue import PgQueue, Retry, RetryLater, current_run

app = PgQueue()

EXECUTIONS_DDL = """
CREATE TABLE IF NOT EXISTS executions (
    run_id bigint NOT NULL, attempt int NOT NULL, label text, pid int NOT NULL,
    started_at timestamptz NOT NULL, finished_at timestamptz NOT NULL DEFAULT clock_timestamp())
"""

_conn: psycopg.AsyncConnection[object] | None = None


async def _record(label: str, started: float) -> None:
    global _conn
    if _conn is None or _conn.closed:
        _conn = await psycopg.AsyncConnection.connect(app.dsn, autocommit=True)
    ctx = current_run()
    await _conn.execute("INSERT INTO executions (run_id, attempt, label, pid, started_at)"
                        " VALUES (%s, %s, %s, %s, to_timestamp(%s))",
                        (ctx.run_id, ctx.attempt, label, os.getpid(), started))


def _record_sync(label: str, started: float) -> None:
    ctx = current_run()
    with psycopg.connect(app.dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO executions (run_id, attempt, label, pid, started_at)"
                     " VALUES (%s, %s, %s, %s, to_timestamp(%s))",
                     (ctx.run_id, ctx.attempt, label, os.getpid(), started))


@app.task
async def record(n: int) -> int:
    started = time.time()
    await _record(str(n), started)
    return n


@app.task
async def nap(seconds: float) -> str:
    started = time.time()
    await asyncio.sleep(seconds)
    await _record("nap", started)
    return "rested"


@app.task(timeout=0.5, retry=Retry(max_attempts=2, initial_delay=0.1, jitter=0))
async def slow_async(seconds: float) -> str:
    await asyncio.sleep(seconds)
    return "done"


@app.task(timeout=0.5, retry=Retry(max_attempts=1))
def slow_sync(seconds: float) -> str:
    time.sleep(seconds)
    return "done"


@app.task(retry=Retry(max_attempts=4, initial_delay=0.2, factor=2, jitter=0))
def flaky(fail_times: int) -> int:
    attempt = current_run().attempt
    _record_sync("flaky", time.time())
    if attempt <= fail_times:
        raise ConnectionError(f"provider hiccup on attempt {attempt}")
    return attempt


@app.task(retry=Retry(max_attempts=5, never_retry=(ValueError,)))
def refuses(text: str) -> None:
    raise ValueError(f"cannot handle {text!r}")


@app.task(retry=Retry(max_attempts=1))
async def throttled(times: int) -> int:
    attempt = current_run().attempt
    if attempt <= times:
        raise RetryLater(0.2, "429 Too Many Requests")
    return attempt


@app.task
def cancellable(seconds: float) -> str:
    deadline = time.time() + seconds
    while time.time() < deadline:
        current_run().raise_if_cancelled()
        time.sleep(0.02)
    return "finished"


@app.task
def crash_worker() -> None:
    """Kills its own worker process, like an out-of-memory kill would."""
    os.kill(os.getpid(), signal.SIGKILL)


@app.task(retry=Retry(max_attempts=2, initial_delay=0.05, jitter=0))
def chatty(lines: int) -> int:
    ctx = current_run()
    ctx.logger.warning("starting attempt %d", ctx.attempt)
    for i in range(lines):
        logging.getLogger("some.library").warning("line %d %s", i, "x" * 100)
    if ctx.attempt == 1:
        raise RuntimeError("first attempt fails")
    return lines
