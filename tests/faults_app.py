"""Tasks for tests/test_faults.py: engine signals, bounds on retries, deadlines, heartbeats,
infrastructure failures and large gathers. Counters live in this process (the tests run the
worker in their own event loop)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from typing import Any

from pgqueue import PgQueue, Retry, RetryLater, current_run

app = PgQueue()

CALLS: Counter[str] = Counter()
STARTED = threading.Event()
RESUME = threading.Event()
BACKENDS: list[int] = []


def reset() -> None:
    CALLS.clear()
    STARTED.clear()
    RESUME.clear()
    BACKENDS.clear()


async def flaky_llm() -> str:
    CALLS["llm"] += 1
    raise ConnectionError("provider answered 503")


@app.task(retry=Retry(max_attempts=1))
async def with_fallback() -> str:
    """The issue's example: a broad except around a step with its own retry policy."""
    try:
        return await current_run().step("llm", flaky_llm, retry=Retry(max_attempts=3, initial_delay=0.05, jitter=0))
    except Exception:
        return "fallback"


@app.task(retry=Retry(max_attempts=1))
def cancellable_sync() -> str:
    """A sync task checking for cancellation inside a broad except: it must still end cancelled."""
    ctx = current_run()
    STARTED.set()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            ctx.raise_if_cancelled()
        except Exception:
            CALLS["swallowed"] += 1
        time.sleep(0.02)
    return "ran to the end"


@app.task(max_retry_later=3)
async def always_later() -> str:
    CALLS["later"] += 1
    raise RetryLater(0.01, "the provider is busy")


async def _write_in_step(conn: Any) -> str:
    """Notes its backend, then (first attempt) waits until the test has terminated it."""
    row = await (await conn.execute("SELECT pg_backend_pid()")).fetchone()
    BACKENDS.append(row[0])
    CALLS["write"] += 1
    if current_run().attempt == 1:
        STARTED.set()
        while not RESUME.is_set():
            await asyncio.sleep(0.02)
    return "written"


@app.task(retry=Retry(max_attempts=1))
async def cut_off() -> str:
    """No retry for the task's own failures: only an infrastructure failure may be retried."""
    return await current_run().step_in_transaction("write", _write_in_step)


@app.task(heartbeat_timeout=1, retry=Retry(max_attempts=2, initial_delay=0.05, jitter=0))
async def hung_async() -> str:
    """Heart-beats a few times, then (first attempt) awaits something that never comes."""
    ctx = current_run()
    CALLS["hung_async"] += 1
    for _ in range(3):
        await asyncio.sleep(0.3)
        ctx.heartbeat()  # 0.9 s of work with beats: alive
    if ctx.attempt == 1:
        await asyncio.Event().wait()
    return "answered"


@app.task(heartbeat_timeout=1, retry=Retry(max_attempts=2, initial_delay=0.05, jitter=0))
def hung_sync() -> str:
    """A sync call stuck without heart-beating (first attempt) until asked to stop."""
    ctx = current_run()
    CALLS["hung_sync"] += 1
    if ctx.attempt == 1:
        while not ctx.cancel_requested:
            time.sleep(0.02)
        CALLS["hung_sync_stopped"] += 1
    return "answered"


@app.task(deadline=1.5, retry=Retry(max_attempts=100, initial_delay=0.2, factor=1, jitter=0))
async def never_works() -> str:
    CALLS["never_works"] += 1
    raise ConnectionError("the provider is down")


@app.task(deadline=1, timeout=60)
async def hangs_past_deadline() -> str:
    CALLS["hangs"] += 1
    await asyncio.Event().wait()
    return "never"


@app.task(retry=Retry(max_attempts=1))
async def child(n: int) -> int:
    if n < 0:
        raise ValueError(f"no square of {n} today")
    return n * n


@app.task(retry=Retry(max_attempts=1))
async def fan_out(count: int) -> dict[str, int]:
    """Spawns `count` children and gathers them all (all-or-nothing)."""
    ctx = current_run()
    ids = await ctx.spawn(child, [{"n": i} for i in range(count)])
    results = await ctx.gather(ids)
    wrong = sum(1 for i, value in enumerate(results) if value != i * i)  # in the order of ids
    return {"gathered": len(results), "wrong": wrong}


@app.task(retry=Retry(max_attempts=1))
async def fan_out_outcomes(numbers: list[int]) -> list[Any]:
    """Gathers each child's outcome: a failed child's place holds its error."""
    ctx = current_run()
    ids = await ctx.spawn(child, [{"n": n} for n in numbers])
    outcomes = await ctx.gather(ids, return_exceptions=True)
    return [o if isinstance(o, int) else {"run": o.run_id, "status": o.status, "type": o.error["type"]}
            for o in outcomes]

