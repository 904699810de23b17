"""The app the streaming benchmark runs (`pgqueue worker stream_bench_app:app`, PYTHONPATH=benchmarks).

- publish: stream `n` small str chunks as fast as the task can, then wait until all are stored;
  returns the seconds that took (the task's own clock), so chunks/s = n / seconds.
- paced: stream `n` chunks `interval` seconds apart, each holding the wall-clock time it was
  handed to `ctx.stream`, for the reader to measure delivery latency.
"""

from __future__ import annotations

import asyncio
import time

from pgqueue import PgQueue, current_run

app = PgQueue()


@app.task
async def publish(n: int) -> float:
    ctx = current_run()
    started = time.perf_counter()
    for i in range(n):
        ctx.stream(f"tok{i} ")
    await ctx.flush_stream()
    return time.perf_counter() - started


@app.task
async def paced(n: int, interval: float) -> int:
    ctx = current_run()
    for i in range(n):
        ctx.stream({"i": i, "sent": time.time()})
        await asyncio.sleep(interval)
    return n
