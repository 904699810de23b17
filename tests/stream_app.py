"""Tasks that stream output and report progress, for the streaming tests and benchmark."""

from __future__ import annotations

import asyncio
import time

from pgqueue import PgQueue, current_run

app = PgQueue()


@app.task()
async def tokens(n: int, pause: float = 0.0) -> int:
    """Streams n str chunks "t0 ", "t1 ", ... with progress, `pause` seconds apart."""
    ctx = current_run()
    for i in range(n):
        ctx.stream(f"t{i} ")
        ctx.progress(i + 1, n, f"token {i + 1} of {n}")
        if pause:
            await asyncio.sleep(pause)
    return n


@app.task()
def json_chunks(n: int) -> int:
    """A sync task streaming JSON values {"i": 0}, {"i": 1}, ..."""
    ctx = current_run()
    for i in range(n):
        ctx.stream({"i": i, "partial": [i] * (i % 3)})
    ctx.progress(n, None, "all sent")
    return n


@app.task()
async def stream_around_sleep(n: int) -> str:
    """Streams, sleeps durably (the run leaves the worker), streams again in the next execution."""
    ctx = current_run()
    for i in range(n):
        ctx.stream(f"before {i}")
    await ctx.sleep(0.1)
    ctx.stream("after")
    return "ok"


@app.task()
async def oversized(size: int) -> str:
    ctx = current_run()
    ctx.stream("small")
    ctx.stream("x" * size)
    return "not reached"


@app.task()
async def many(n: int) -> int:
    ctx = current_run()
    for i in range(n):
        ctx.stream(i)
    await ctx.flush_stream()
    return n


@app.task()
def sync_tokens(n: int, pause: float = 0.0) -> int:
    """tokens for a sync task (its own thread)."""
    ctx = current_run()
    for i in range(n):
        ctx.stream(f"t{i} ")
        if pause:
            time.sleep(pause)
    return n


async def generate(n: int) -> str:
    """A step's function streaming what it produces (an LLM call, say)."""
    ctx = current_run()
    for i in range(n):
        ctx.stream(f"step {i}")
    return "generated"


@app.task()
async def stream_in_step(n: int) -> str:
    """Streams from inside a step (once per run) and from its body (again at each execution)."""
    ctx = current_run()
    ctx.stream("body")
    await ctx.step("generate", generate, n)
    await ctx.sleep(0.1)
    return "ok"
