"""The app the worker benchmark runs: one no-op async task.

Loaded by `pgqueue worker bench_app:app` with PYTHONPATH=benchmarks and PGQUEUE_DSN set.
"""

from __future__ import annotations

from pgqueue import PgQueue

app = PgQueue()


@app.task
async def noop(n: int) -> None:
    """Does nothing: what is left is the worker's own cost per run."""
    return None
