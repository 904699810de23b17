"""Tasks that receive messages, answer updates, publish state and get cancelled by events."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import psycopg

from pgqueue import CancelOn, PgQueue, current_run

app = PgQueue()

TOOK_DDL = """
CREATE TABLE IF NOT EXISTS took (run_id bigint, n int, pid int, at timestamptz DEFAULT clock_timestamp());
"""


def prepare(dsn: str) -> None:
    """Bind the app to `dsn`, empty the `took` table, write the cancel_on rules (as a worker would)."""
    app.db.reset(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(TOOK_DDL)
        conn.execute("TRUNCATE took")
    app.register_tasks()


def record(n: int) -> None:
    """What the run's code did with a message (outside any transaction of pgqueue's)."""
    with psycopg.connect(app.dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO took (run_id, n, pid) VALUES (%s, %s, %s)", (current_run().run_id, n, os.getpid()))


@app.task()
async def inbox(count: int, pause: float = 0.0) -> list[Any]:
    """Takes `count` messages "note", in order; returns their payloads."""
    ctx = current_run()
    got = []
    for _ in range(count):
        message = await ctx.receive("note")
        assert message is not None
        got.append(message.payload)
        record(message.payload["n"] if isinstance(message.payload, dict) else -1)
        await ctx.set_state({"received": len(got)})
        if pause:
            await asyncio.sleep(pause)
    return got


@app.task()
def inbox_sync(count: int) -> list[Any]:
    """inbox for a sync task."""
    ctx = current_run()
    got = []
    for _ in range(count):
        message = ctx.receive_sync("note")
        assert message is not None
        got.append(message.payload)
        ctx.set_state_sync({"received": len(got)})
    return got


@app.task()
async def receive_or_timeout(timeout: float) -> Any:
    message = await current_run().receive("note", timeout=timeout)
    return "timed out" if message is None else message.payload


@app.task()
async def counter() -> int:
    """Answers updates "add" with the new total until an "add" of 0; sends are counted too."""
    ctx = current_run()
    total = 0
    await ctx.set_state({"total": total, "phase": "ready"})
    while True:
        message = await ctx.receive("add")
        assert message is not None
        if message.payload == 0:
            if message.wants_reply:
                await message.reply("bye")
            return total
        total += int(message.payload)
        await ctx.set_state({"total": total, "phase": "counting"})
        if message.wants_reply:
            await message.reply(total)


@app.task()
def counter_sync() -> int:
    ctx = current_run()
    message = ctx.receive_sync("add")
    assert message is not None
    assert message.reply_sync(message.payload * 2) is True
    return int(message.payload)


@app.task()
async def never_replies() -> str:
    message = await current_run().receive("add")
    assert message is not None
    return "took it, said nothing"


@app.task()
async def naps(seconds: float) -> str:
    """Publishes its state, then sleeps durably; a second state after."""
    ctx = current_run()
    await ctx.set_state({"phase": "napping", "for": seconds})
    await ctx.sleep(seconds)
    await ctx.set_state({"phase": "awake"})
    return "rested"


@app.task()
async def awaits_approval() -> Any:
    ctx = current_run()
    await ctx.set_state({"phase": "waiting for approval"})
    return await ctx.wait_for_event("approval", str(ctx.run_id))


@app.task()
def sets_huge_state(size: int) -> str:
    current_run().set_state_sync({"blob": "x" * size})
    return "not reached"


@app.task()
async def slow_inbox(count: int) -> list[int]:
    """For the SIGKILL test: takes `count` messages with a pause after each (the worker may be
    killed at any point of it)."""
    ctx = current_run()
    got: list[int] = []
    for _ in range(count):
        message = await ctx.receive("note")
        assert message is not None
        got.append(message.payload["n"])
        record(message.payload["n"])
        time.sleep(0.05)  # blocks the loop a little: a kill lands between receives or inside one
    return got


# -- cancel on event --------------------------------------------------------------------------

@app.task(cancel_on=CancelOn("order.cancelled", match="order_id"))
async def fulfil(order_id: int, child_count: int = 1) -> str:
    """Spawns children that wait for an event no one sends, then gathers them."""
    ctx = current_run()
    ids = await ctx.spawn(ship, [{"order_id": order_id, "part": i} for i in range(child_count)])
    await ctx.gather(ids)
    return "shipped"


@app.task()
async def ship(order_id: int, part: int) -> str:
    await current_run().wait_for_event("shipped", f"{order_id}/{part}")
    return "ok"


@app.task(cancel_on=[CancelOn("order.cancelled", match="order_id"), CancelOn("shutdown")])
def bill(order_id: int) -> str:
    """A sync task polling for cancellation while it runs."""
    ctx = current_run()
    while True:
        ctx.raise_if_cancelled()
        time.sleep(0.05)
