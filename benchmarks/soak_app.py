"""The app benchmarks/soak.py churns: plain runs, three-step durable runs, fan-outs of 100
children, and keyed runs with a concurrency limit.

Loaded by `pgqueue worker soak_app:app` with PYTHONPATH=benchmarks and PGQUEUE_DSN set.
"""

from __future__ import annotations

from pgqueue import Concurrency, PgQueue, current_run

app = PgQueue()


@app.task
async def plain(n: int) -> int:
    return n


@app.task
async def three_steps(n: int) -> int:
    ctx = current_run()
    a = await ctx.step("first", lambda: n + 1)
    b = await ctx.step("second", lambda: a * 2)
    return int(await ctx.step("third", lambda: b - 1))


@app.task
async def child(i: int) -> int:
    return i


@app.task
async def fan_out(n: int) -> int:
    ctx = current_run()
    ids = await ctx.spawn(child, [{"i": i} for i in range(n)])
    return sum(r for r in await ctx.gather(ids) if isinstance(r, int))


@app.task(concurrency=Concurrency(key="tenant", max_running=3))
async def keyed(tenant: str, n: int) -> int:
    return n
