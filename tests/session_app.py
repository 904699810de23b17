"""Keyed sessions for the session tests: a counter keyed by user, and a chat turn whose first
attempt can be held (and SIGKILLed) between its step and its end."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import psycopg

from pgqueue import PgQueue, Retry, current_run

app = PgQueue()

#: (key, n, attempt, start, end) of every counter invocation that ran its code, in this process
INTERVALS: list[tuple[str, int, int, float, float]] = []

EFFECTS_DDL = """
CREATE TABLE IF NOT EXISTS session_effects (
    key text NOT NULL, text text NOT NULL, attempt integer NOT NULL, run_id bigint NOT NULL,
    started timestamptz NOT NULL, ended timestamptz
)"""


@app.session("counter", key="user_id", retry=Retry(max_attempts=3, initial_delay=0.05, jitter=0))
async def counter(user_id: str, n: int, fail_first: bool = False, pause: float = 0.0) -> int:
    """Counts invocations per user and lists their `n` in the order they ran; `fail_first`: the
    first attempt fails after its step (the retry must apply the change once, and keep its place)."""
    ctx = current_run()
    started = time.monotonic()
    ctx.state["count"] = ctx.state.get("count", 0) + 1
    ctx.state.setdefault("order", []).append(n)
    seen = await ctx.step("seen", _echo, n)
    if pause:
        await asyncio.sleep(pause)
    INTERVALS.append((user_id, n, ctx.attempt, started, time.monotonic()))
    if fail_first and ctx.attempt == 1:
        raise RuntimeError(f"invocation {n} fails once")
    return int(seen)


async def _echo(n: int) -> int:
    await asyncio.sleep(0)
    return n


@app.session("counter_sync", key="user_id", retry=Retry(max_attempts=2, initial_delay=0.05, jitter=0))
def counter_sync(user_id: str, n: int) -> int:
    ctx = current_run()
    ctx.state["count"] = ctx.state.get("count", 0) + 1
    ctx.state.setdefault("order", []).append(n)
    ctx.step_sync("seen", lambda: n)
    return int(ctx.state["count"])


async def _record(key: str, text: str) -> str:
    """The step's effect, once per call: a row in session_effects."""
    ctx = current_run()
    async with await psycopg.AsyncConnection.connect(app.dsn, autocommit=True) as conn:
        await conn.execute("INSERT INTO session_effects (key, text, attempt, run_id, started, ended) "
                     "VALUES (%s, %s, %s, %s, clock_timestamp(), clock_timestamp())",
                     (key, text, ctx.attempt, ctx.run_id))
    return f"reply to {text}"


@app.session("chat", key="user_id", retry=Retry(max_attempts=3, initial_delay=0.1, jitter=0))
async def chat_turn(user_id: str, text: str, hold: bool = False) -> int:
    """One turn: remember the user's text, reply in a step (its effect recorded once), remember
    the reply. `hold`: the first attempt then waits (to be killed) before it ends."""
    ctx = current_run()
    with psycopg.connect(app.dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO session_effects (key, text, attempt, run_id, started) "
                     "VALUES (%s, %s, %s, %s, clock_timestamp())", (user_id, "start " + text, ctx.attempt, ctx.run_id))
    ctx.state.setdefault("history", []).append(text)
    reply = await ctx.step("reply", _record, user_id, text)
    ctx.state["history"].append(reply)
    ctx.state["turns"] = ctx.state.get("turns", 0) + 1
    if hold and ctx.attempt == 1:
        await ctx.save_state()  # the test waits for this, then kills the worker
        await asyncio.sleep(3600)
    with psycopg.connect(app.dsn, autocommit=True) as conn:
        conn.execute("UPDATE session_effects SET ended = clock_timestamp() WHERE run_id = %s AND attempt = %s "
                     "AND text LIKE 'start %%'", (ctx.run_id, ctx.attempt))
    return int(ctx.state["turns"])


@app.session("hoarder", key="user_id", retry=Retry(max_attempts=3, initial_delay=0.05))
async def hoarder(user_id: str, size: int) -> str:
    current_run().state["blob"] = "x" * size
    return "kept"


@app.task()
async def not_a_session() -> Any:
    return current_run().state
