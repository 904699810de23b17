"""The app the chaos suite (benchmarks/chaos.py) runs through real `pgqueue worker` processes.

Loaded by `pgqueue worker chaos_app:app` with PYTHONPATH=benchmarks and PGQUEUE_DSN set. Every
task leaves evidence in the database that benchmarks/chaos.py checks afterwards:

- `durable3`: three steps, the middle one through `step_in_transaction`, which INSERTs a row
  (run, step) into chaos_effects. The table has no unique constraint on purpose: a step committed
  twice shows up as two rows.
- `keyed`: under a concurrency limit of KEYED_LIMIT per key; records its start and end in
  chaos_spans so that the overlap of running spans per key can be counted.
- `waiter`: waits EVENTS_PER_KEY times on ("chaos", key); the wait steps record the event ids.
- `parent`/`child`: a fan-out (spawn + gather); `plain`: nothing; `doomed`: meant to fail.
- `tick`: a per-second cron schedule; its runs are matched with pgqueue.cron_ticks.
"""

from __future__ import annotations

import asyncio
from typing import Any

from pgqueue import Concurrency, PgQueue, Retry, current_run

app = PgQueue()

KEYED_LIMIT = 2
KEYED_SECONDS = 0.2
DURABLE_SECONDS = 0.3
EVENT_NAME = "chaos"
CRON_NAME = "chaos-tick"
# The keyed task writes its spans on its own connections: a terminated backend or a restarting
# server makes that write fail like any user database call, so it retries generously (the chaos
# is far more hostile than the default policy is meant for).
PATIENT = Retry(max_attempts=200, initial_delay=0.2, factor=1.5, max_delay=2.0)

DDL = """
CREATE TABLE IF NOT EXISTS chaos_effects (run_id bigint NOT NULL, step text NOT NULL,
                                          committed_at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE TABLE IF NOT EXISTS chaos_spans (run_id bigint NOT NULL, attempt integer NOT NULL, key text NOT NULL,
                                        started_at timestamptz NOT NULL, ended_at timestamptz);
CREATE TABLE IF NOT EXISTS chaos_sent (key text NOT NULL, seq integer NOT NULL, PRIMARY KEY (key, seq));
"""


async def first(n: int) -> int:
    # long enough that a killed or cut-off worker is caught with durable runs in flight
    await asyncio.sleep(DURABLE_SECONDS)
    return n


def last(n: int) -> int:
    return n + 2


async def write_effect(conn: Any, run_id: int) -> int:
    await conn.execute("INSERT INTO chaos_effects (run_id, step) VALUES (%s, 'effect')", (run_id,))
    return run_id


@app.task
async def plain(n: int) -> int:
    return n


@app.task
async def durable3(n: int) -> int:
    ctx = current_run()
    a = await ctx.step("a", first, n)
    await ctx.step_in_transaction("effect", write_effect, ctx.run_id)
    c = await ctx.step("c", last, n)
    return a + c


@app.task
async def child(i: int) -> int:
    return i


@app.task
async def parent(n: int) -> int:
    ctx = current_run()
    ids = await ctx.spawn(child, [{"i": i} for i in range(n)])
    results = await ctx.gather(ids)
    return sum(results)


@app.task(concurrency=Concurrency(key="key", max_running=KEYED_LIMIT), retry=PATIENT)
async def keyed(key: str, n: int) -> int:
    ctx = current_run()
    pool = await app.db.async_pool()
    async with pool.connection() as conn:
        await conn.execute("INSERT INTO chaos_spans (run_id, attempt, key, started_at) "
                           "VALUES (%s, %s, %s, clock_timestamp())", (ctx.run_id, ctx.attempt, key))
    await asyncio.sleep(KEYED_SECONDS)
    async with pool.connection() as conn:
        await conn.execute("UPDATE chaos_spans SET ended_at = clock_timestamp() WHERE run_id = %s AND attempt = %s",
                           (ctx.run_id, ctx.attempt))
    return n


@app.task
async def waiter(key: str, count: int) -> list[int]:
    ctx = current_run()
    seqs: list[int] = []
    for _ in range(count):
        event = await ctx.wait_for_event(EVENT_NAME, key=key)
        seqs.append(int(event["seq"]))
    return seqs


class Doomed(Exception):
    """The failure the `doomed` task is meant to end with."""


@app.task(retry=Retry(max_attempts=1))
async def doomed(n: int) -> None:
    raise Doomed(f"run {n} is meant to fail")


@app.task
async def tick() -> None:
    return None


app.schedule(tick, "* * * * * *", name=CRON_NAME)
