"""Running everything queued, in-process, through the real worker, until nothing is due.

A drain is rounds of: fire the cron ticks that are due, fail the runs past their
schedule-to-start window or deadline (what the worker's cron firer and expirer do on their
timers), then run a worker in burst mode on every queue with a due run. The worker claims,
executes, checkpoints and records as in production; children, woken parents and workflow nodes
become due as their parents or children finish and are run in the same round. The drain ends
after a round that found nothing to do. Runs scheduled for later (a retry's backoff, a durable
sleep, an event's timeout, a delayed enqueue) are not due: move the test clock
(`Clock.advance`) and drain again, or pass `skip_delays=True` to jump the clock to each of them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from ..app import PgQueue
from ..cron import fire_due_op
from ..ops import Op, statement
from ..runs import RunInfo
from ..status import RunStatus
from ..worker import Worker, WorkerSettings
from ..worker.expirer import expire_deadlines_op, expire_op
from .clock import Clock

log = logging.getLogger("pgqueue.testing")

T = TypeVar("T")



@dataclass
class Drained:
    """What a drain did: the runs it worked on (in id order, as they stand after it) and rounds."""

    runs: list[RunInfo] = field(default_factory=list)
    rounds: int = 0
    cron_runs: int = 0

    def of(self, task: str) -> list[RunInfo]:
        return [run for run in self.runs if run.task == task]

    @property
    def failed(self) -> list[RunInfo]:
        return [run for run in self.runs if run.status in (RunStatus.FAILED, RunStatus.DEAD)]

    def raise_failures(self) -> Drained:
        """Raise AssertionError naming the runs that failed (with their errors); else return self."""
        if self.failed:
            lines = [f"run {r.id} ({r.task}): {(r.error or {}).get('type')}: {(r.error or {}).get('message')}"
                     for r in self.failed]
            raise AssertionError("runs failed during the drain:\n  " + "\n  ".join(lines))
        return self


def _due_queues_op() -> Op[list[str]]:
    rows = yield statement("testing.due_queues")
    return [row[0] for row in rows]


def _next_wake_op() -> Op[object]:
    rows = yield statement("testing.next_wake")
    return rows[0][0]


def _worked_on_op(workers: list[str]) -> Op[list[RunInfo]]:
    rows: list[RunInfo] = yield statement("testing.worked_on", {"workers": workers}, row=RunInfo)
    return rows


def _housekeeping_op() -> Op[int]:
    """Fire due cron ticks and expire what is past its window, in that order; ticks fired."""
    fired = yield from fire_due_op()
    yield from expire_op()
    yield from expire_deadlines_op()
    return sum(1 for tick in fired if tick.run_id is not None)


async def drain_async(app: PgQueue, *, concurrency: int = 10, timeout: float = 60.0, max_rounds: int = 1000,
                      skip_delays: bool = False) -> Drained:
    """Run what is due, with the real worker in this event loop, until nothing is due.

    `concurrency`: the worker's slots (1 runs one run at a time, in claim order). `timeout`:
    seconds the whole drain may take (TimeoutError after, naming what kept it busy).
    `skip_delays`: when nothing is due but runs are scheduled for later, move the test clock to
    the next of them and go on (never for cron ticks, which never end); needs a test database.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    workers: list[str] = []
    drained = Drained()
    clock = Clock(app.dsn) if skip_delays else None
    # the tasks and the schedules declared in code, as a worker's start writes them (cron ticks
    # are fired here, before any worker of this drain started)
    await app.db.execute_async(app.registry.register_op(), transaction=True)
    while drained.rounds < max_rounds:
        drained.cron_runs += await app.db.execute_async(_housekeeping_op(), transaction=True)
        queues = await app.db.execute_async(_due_queues_op())
        if not queues:
            wake = await app.db.execute_async(_next_wake_op()) if clock is not None else None
            if clock is None or wake is None:
                break
            await clock.travel_to_async(wake)  # type: ignore[arg-type]
            continue
        drained.rounds += 1
        # quick to notice finished runs; no pruning of what the test wants to look at
        worker = Worker(app, WorkerSettings(queues=queues, concurrency=concurrency, burst=True, poll_interval=0.05,
                                            prune_interval=0.0, name="pgqueue-testing-drain"))
        workers.append(worker.id)
        left = deadline - loop.time()
        serving = asyncio.ensure_future(worker.serve())
        done, _ = await asyncio.wait([serving], timeout=max(left, 0.0))
        if not done:
            worker.request_stop()
            await asyncio.wait([serving], timeout=worker.settings.grace_period + 10)
            raise TimeoutError(f"drain still busy after {timeout:g}s (queues {', '.join(queues)}); a task that "
                               "enqueues itself for ever, or one that never returns? Raise timeout= if it "
                               "is only slow")
        serving.result()  # the worker's own start-up error, if any
    drained.runs = await app.db.execute_async(_worked_on_op(workers)) if workers else []
    return drained


def drain(app: PgQueue, **options: float | int | bool) -> Drained:
    """`drain_async` for sync tests: runs it on an event loop of its own (in this thread)."""
    return run_in_own_loop(app, lambda: drain_async(app, **options))  # type: ignore[arg-type]


def run_in_own_loop(app: PgQueue, make: Callable[[], Awaitable[T]]) -> T:
    """Run `make()` on a new event loop, for sync code; refused inside a running loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise RuntimeError("called from a running event loop: use the _async twin (await drain_async(app), "
                           "await call_async(task, ...))")

    async def main() -> T:
        # the app's async pool belongs to the loop that opened it: this loop gets one of its own
        async with app.db.own_async_pool():
            return await make()

    return asyncio.run(main())
