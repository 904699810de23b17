"""The app the worker benchmarks run: no-op async tasks, without and with concurrency keys.

Loaded by `pgqueue worker bench_app:app` with PYTHONPATH=benchmarks and PGQUEUE_DSN set.
"""

from __future__ import annotations

import asyncio

from pgqueue import Concurrency, PgQueue

app = PgQueue()

#: runs of one tenant that may run at once (benchmarks/flow.py)
TENANT_LIMIT = 5
#: a limit no key reaches in the benchmarks: the keyed claim path, never saturated
HIGH_LIMIT = 100_000


@app.task
async def noop(n: int) -> None:
    """Does nothing: what is left is the worker's own cost per run."""
    return None


@app.task
async def tenant_noop(tenant: str, n: int) -> None:
    """The same input as `limited_noop`, without a concurrency key: the unlimited baseline."""
    return None


@app.task(concurrency=Concurrency(key="tenant", max_running=TENANT_LIMIT))
async def limited_noop(tenant: str, n: int) -> None:
    """At most TENANT_LIMIT running at once per tenant."""
    return None


@app.task(concurrency=Concurrency(key="tenant", max_running=HIGH_LIMIT))
async def keyed_noop(tenant: str, n: int) -> None:
    """Keyed (round-robin, advisory lock, running count per key) with a limit never reached."""
    return None


@app.task
async def io_wait(n: int, ms: float = 20.0) -> None:
    """Waits `ms` milliseconds, as a task waiting on an API would: bound by slots, not CPU."""
    await asyncio.sleep(ms / 1000)
