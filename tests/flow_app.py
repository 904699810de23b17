"""Tasks for the flow-control tests; each records when it ran in the `spans` table."""

from __future__ import annotations

import asyncio
import os
import time

import psycopg

from pgqueue import Concurrency, PgQueue, RateLimit, RateLimited, current_run

app = PgQueue()
app.rate_limit("provider", limit=20, per=1)

SPANS_DDL = """
CREATE TABLE IF NOT EXISTS spans (
    run_id bigint NOT NULL, attempt int NOT NULL, tenant text, pid int NOT NULL,
    started_at timestamptz NOT NULL, finished_at timestamptz NOT NULL DEFAULT clock_timestamp(), note text)
"""

_conn: psycopg.AsyncConnection[object] | None = None


async def _record(tenant: str, started: float, note: str | None = None) -> None:
    global _conn
    if _conn is None or _conn.closed:
        _conn = await psycopg.AsyncConnection.connect(app.dsn, autocommit=True)
    ctx = current_run()
    await _conn.execute("INSERT INTO spans (run_id, attempt, tenant, pid, started_at, note)"
                        " VALUES (%s, %s, %s, %s, to_timestamp(%s), %s)",
                        (ctx.run_id, ctx.attempt, tenant, os.getpid(), started, note))


@app.task(concurrency=Concurrency(key="tenant", max_running=3))
async def embed(tenant: str, seconds: float = 0.02) -> str:
    """At most 3 at once per tenant."""
    started = time.time()
    await asyncio.sleep(seconds)
    await _record(tenant, started)
    return tenant


@app.task(rate_limits=[RateLimit("provider")])
async def call_provider(n: int, busy: bool = False) -> int:
    """20 per second across the fleet; `busy` answers like a provider's 429 the first time."""
    started = time.time()
    if busy and current_run().attempt == 1:
        await _record("provider", started, note="429")
        raise RateLimited("provider", retry_after=2.0)
    await _record("provider", started)
    return n
