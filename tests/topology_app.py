"""Tasks of the topology tests (PgBouncer, failover, roles): the worker's core paths — plain
runs, durable steps and sleeps, a concurrency limit, a rate limit, a cron schedule, events.
Each execution is recorded in the `topo_log` table, on a fresh connection each time (nothing
prepared, nothing of a session kept: it works through PgBouncer too)."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import psycopg

from pgqueue import Concurrency, PgQueue, RateLimit, Retry, current_run

app = PgQueue()
app.rate_limit("topo-meter", limit=10, per=1, burst=5)

LOG_DDL = """
CREATE TABLE IF NOT EXISTS topo_log (
    run_id bigint NOT NULL, what text NOT NULL, pid int NOT NULL,
    started_at timestamptz NOT NULL, finished_at timestamptz NOT NULL DEFAULT clock_timestamp())
"""


async def record(what: str, started: float) -> None:
    async with await psycopg.AsyncConnection.connect(app.dsn, autocommit=True, prepare_threshold=None) as conn:
        await conn.execute("INSERT INTO topo_log (run_id, what, pid, started_at) VALUES (%s, %s, %s, to_timestamp(%s))",
                           (current_run().run_id, what, os.getpid(), started))


@app.task
async def double(n: int) -> int:
    await record("double", time.time())
    return n * 2


@app.task(retry=Retry(max_attempts=3, initial_delay=0.1, jitter=0))
async def stepped(n: int) -> int:
    """Two steps around a durable sleep: each step's side effect happens once per run."""
    ctx = current_run()

    async def first() -> int:
        await record("first", time.time())
        return n + 1

    async def second(x: int) -> int:
        await record("second", time.time())
        return x * 10

    a = await ctx.step("first", first)
    await ctx.sleep(0.2)
    return await ctx.step("second", second, a)


@app.task(concurrency=Concurrency(key="tenant", max_running=2))
async def limited(tenant: str, seconds: float = 0.1) -> str:
    started = time.time()
    await asyncio.sleep(seconds)
    await record(f"limited {tenant}", started)
    return tenant


@app.task(rate_limits=[RateLimit("topo-meter")])
async def metered(n: int) -> int:
    await record("metered", time.time())
    return n


@app.task
async def waiter(key: str) -> Any:
    return await current_run().wait_for_event("topo.go", key=key, timeout=120)


@app.task
async def tick() -> None:
    await record("tick", time.time())


app.schedule(tick, "* * * * * *", name="topo-every-second")
