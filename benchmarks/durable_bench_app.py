"""The app the durable benchmark runs: a plain no-op task, a 3-step durable task, and a fan-out.

Loaded by `pgqueue worker durable_bench_app:app` with PYTHONPATH=benchmarks and PGQUEUE_DSN set.
The step functions are module-level (not lambdas) so each keeps one cached pydantic adapter, as
real step functions do.
"""

from __future__ import annotations

from pgqueue import PgQueue, current_run

app = PgQueue()

FAN_OUT_CHUNK = 1_000  # children per ctx.spawn call


def step_a(n: int) -> int:
    return n


def step_b(n: int) -> int:
    return n + 1


def step_c(n: int) -> int:
    return n + 2


@app.task
async def plain(n: int) -> None:
    """Does nothing: the baseline, the worker's own cost per run."""
    return None


@app.task
async def three_steps(n: int) -> int:
    """Three checkpointed steps with trivial functions: what is left is the cost of the checkpoints."""
    ctx = current_run()
    a = await ctx.step("a", step_a, n)
    b = await ctx.step("b", step_b, n)
    c = await ctx.step("c", step_c, n)
    return a + b + c


@app.task
async def child(i: int) -> None:
    """A no-op child of `parent`."""
    return None


@app.task
async def parent(n: int, chunk: int = FAN_OUT_CHUNK) -> int:
    """Spawns `n` children in chunks of `chunk`, then gathers them all (waiting holds no slot)."""
    ctx = current_run()
    ids: list[int] = []
    for start in range(0, n, chunk):
        ids += await ctx.spawn(child, [{"i": i} for i in range(start, min(n, start + chunk))])
    results = await ctx.gather(ids)
    return len(results)
