"""The worker: claims runs in batches, executes them, records outcomes, keeps leases alive.

Loops, each on its own (pooled) connection so one slow part never blocks another:
- claim: take up to the free slots' worth of due runs per round trip; sleep on LISTEN when idle;
- completer: write outcomes in batches, fenced by attempt and worker;
- heartbeat: extend the leases of held runs, learn about cancellations and lost leases;
- maintenance: rescue runs of dead workers (expired leases) and expire runs that waited too long.
No transaction is held while task code runs: claim commits, the task runs, the outcome commits.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from . import tracing
from ._completer import Completer
from ._executor import Claimed, Executor
from ._ops import run_async
from ._sql import query
from ._stepwriter import StepWriter
from .app import PgQueue
from .config import connect_async, describe_dsn
from .context import RunContext, TaskLogHandler
from .cron import fire_due_op, sync_op
from .errors import ConfigurationError
from .metrics import Metrics, check_binding, gauges_op, serve
from .migrations import check_schema_op

log = logging.getLogger("pgqueue.worker")

DB_ERRORS = (psycopg.OperationalError, psycopg.InterfaceError, PoolTimeout, OSError)


@dataclass
class WorkerSettings:
    """How a worker runs. Defaults suit production; tests shrink the intervals."""

    queues: list[str] = field(default_factory=lambda: ["default"])
    concurrency: int = 10
    #: most runs claimed per round trip (0: as many as there are free slots)
    batch_size: int = 0
    name: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    #: seconds a claimed run stays leased without a heartbeat
    lease: float = 30.0
    #: seconds between heartbeats (extending leases)
    heartbeat: float = 5.0
    #: seconds between claims when no notification arrives (also how late a scheduled run may start)
    poll_interval: float = 1.0
    #: seconds to let running runs finish on shutdown before handing them back
    grace_period: float = 30.0
    #: crash recoveries after which a run is marked dead instead of run again
    max_recoveries: int = 3
    #: exit once no due run is left (for scripts, demos and tests)
    burst: bool = False
    #: serve Prometheus metrics on this port (None: off); any host but loopback needs a token
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    metrics_token: str | None = None

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ConfigurationError("concurrency must be at least 1")
        if not self.queues:
            raise ConfigurationError("a worker needs at least one queue")
        if self.heartbeat >= self.lease:
            raise ConfigurationError(
                f"heartbeat ({self.heartbeat:g}s) must be shorter than the lease ({self.lease:g}s), "
                "or leases expire between heartbeats")


@dataclass
class _Running:
    run: Claimed
    ctx: RunContext
    task: asyncio.Task[None]


class Worker:
    def __init__(self, app: PgQueue, settings: WorkerSettings | None = None) -> None:
        self.app = app
        self.settings = settings or WorkerSettings()
        self.id = str(uuid.uuid4())
        self._threads = ThreadPoolExecutor(self.settings.concurrency, thread_name_prefix="pgqueue-task")
        self._executor = Executor(app, self._threads)
        self._running: dict[int, _Running] = {}
        self._wake = asyncio.Event()
        self._slot_free = asyncio.Event()
        self._stopping = asyncio.Event()
        self._pool: AsyncConnectionPool | None = None
        self._completer = Completer(self.id, self._connection, self._backoff, on_written=self._slot_free.set)
        self._steps: StepWriter | None = None
        self.metrics = Metrics()
        self._task_logs = TaskLogHandler()
        self.started = asyncio.Event()
        self.claimed_total = 0

    # -- lifecycle -------------------------------------------------------------------------

    def request_stop(self) -> None:
        """Stop claiming; running runs get the grace period to finish."""
        if not self._stopping.is_set():
            log.info("worker %s stopping: no new claims; waiting up to %gs for %d running run(s)",
                     self.settings.name, self.settings.grace_period, len(self._running))
        self._stopping.set()
        self._wake.set()

    async def run(self) -> None:
        if self.settings.metrics_port is not None:
            check_binding(self.settings.metrics_host, self.settings.metrics_token)
        dsn = self.app.dsn
        # durable steps of concurrent runs each commit through the app's pools: more connections
        # let their commits share WAL flushes instead of queueing for a few (capped, so that
        # many workers stay within max_connections; the pools only grow on demand)
        self.app.pool_size = max(self.app.pool_size, min(self.settings.concurrency, 20))
        async with await connect_async(dsn, autocommit=True) as conn:
            await run_async(conn, check_schema_op())
        # prepare_threshold=None: no server-side prepared statements, so every batch gets a plan
        # for its actual arrays. A generic plan of `complete` was measured scanning all running
        # runs per outcome (1.3 s instead of 7 ms for a batch of 500).
        self._pool = AsyncConnectionPool(dsn, min_size=2, max_size=6,
                                         kwargs={"autocommit": True, "prepare_threshold": None},
                                         open=False, name=f"pgqueue-worker-{self.settings.name}")
        await self._pool.open()
        try:
            await asyncio.to_thread(self.app.register_tasks)
            await self.app.execute_async(sync_op(list(self.app.schedules.values())))
            await self._execute("register_worker", {
                "id": self.id, "name": self.settings.name, "host": socket.gethostname(), "pid": os.getpid(),
                "queues": self.settings.queues, "concurrency": self.settings.concurrency,
                "lease_s": self.settings.lease})
            log.info("pgqueue worker %s started: database %s, queues %s, concurrency %d, tasks: %s",
                     self.settings.name, describe_dsn(dsn), ",".join(self.settings.queues),
                     self.settings.concurrency, ", ".join(sorted(self.app.tasks)) or "none")
            [(max_payload,)] = await self._execute("max_payload", {}, group="durable")
            self._steps = StepWriter(self.id, self._connection, int(max_payload))
            background = [asyncio.create_task(loop(), name=loop.__name__) for loop in
                          (self._listen_loop, self._heartbeat_loop, self._maintenance_loop, self._completer.run,
                           self._steps.run, self._cron_loop)]
            metrics_server = None
            if self.settings.metrics_port is not None:
                metrics_server = await serve(self.settings.metrics_host, self.settings.metrics_port,
                                             self.settings.metrics_token, self._render_metrics)
                log.info("metrics on http://%s:%d/metrics", self.settings.metrics_host, self.settings.metrics_port)
            self.started.set()
            logging.getLogger().addHandler(self._task_logs)
            try:
                await self._claim_loop()
                await self._shutdown()
            finally:
                if metrics_server is not None:
                    metrics_server.close()
                logging.getLogger().removeHandler(self._task_logs)
                for task in background:
                    task.cancel()
                await asyncio.gather(*background, return_exceptions=True)
            await self._execute_quietly("stop_worker", {"id": self.id})
        finally:
            self._threads.shutdown(wait=False, cancel_futures=True)
            await self._pool.close()
        log.info("pgqueue worker %s stopped", self.settings.name)

    async def _shutdown(self) -> None:
        if self._running:
            tasks = [r.task for r in self._running.values()]
            await asyncio.wait(tasks, timeout=self.settings.grace_period)
        unfinished = list(self._running.values())
        if unfinished:
            log.warning("grace period over: handing %d unfinished run(s) back to the queue", len(unfinished))
            for entry in unfinished:
                entry.task.cancel()
            await asyncio.gather(*(e.task for e in unfinished), return_exceptions=True)
            await self._hand_back([e.run for e in unfinished])
        try:
            await asyncio.wait_for(self._completer.wait_idle(), timeout=max(5.0, self.settings.lease))
        except TimeoutError:
            log.error("%d outcome(s) could not be written before shutdown; those runs are run again after "
                      "their lease expires", len(self._completer.pending()))

    # -- database access -------------------------------------------------------------------

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        assert self._pool is not None
        async with self._pool.connection(timeout=max(2.0, self.settings.lease / 2)) as conn:
            yield conn

    async def _execute(self, name: str, params: dict[str, Any], group: str = "worker") -> list[tuple[Any, ...]]:
        async with self._connection() as conn:
            cur = await conn.execute(query(group, name), params)
            return await cur.fetchall() if cur.description is not None else []

    async def _execute_quietly(self, name: str, params: dict[str, Any]) -> None:
        try:
            await self._execute(name, params)
        except DB_ERRORS as exc:
            log.warning("%s failed: %s", name, exc)

    async def _backoff(self, failures: int) -> None:
        delay = min(10.0, 0.1 * 2 ** min(failures, 7)) * (0.5 + random.random() / 2)
        if failures in (1, 5) or failures % 20 == 0:
            log.warning("database unavailable (%d failed tries); retrying in %.1fs", failures, delay)
        await asyncio.sleep(delay)

    # -- claiming and running --------------------------------------------------------------

    async def _claim_loop(self) -> None:
        settings = self.settings
        failures = 0
        while not self._stopping.is_set():
            # a slot is free once the run's outcome is written, not when its code returns: else
            # claims outrun the completer and the held runs (and every batch) grow without bound
            free = settings.concurrency - len(self._running) - self._completer.backlog()
            if free <= 0:
                self._slot_free.clear()
                await self._slot_free.wait()
                await asyncio.sleep(0)  # let other runs finishing in this tick free their slots too
                continue
            limit = min(free, settings.batch_size) if settings.batch_size else free
            self._wake.clear()
            try:
                started = time.monotonic()
                rows = await self._execute("claim", {"queues": settings.queues, "limit": limit,
                                                     "worker": self.id, "lease_s": settings.lease})
                self.metrics.inc("pgqueue_claims_total")
                self.metrics.observe("pgqueue_claim_seconds", time.monotonic() - started)
                failures = 0
            except DB_ERRORS as exc:
                failures += 1
                if failures == 1:
                    log.warning("claim failed: %s", exc)
                await self._backoff(failures)
                continue
            claimed = [Claimed(*row) for row in rows]
            if claimed and tracing.enabled():
                claimed = await self._with_trace_contexts(claimed)
            for run in claimed:
                self._start(run)
            self.claimed_total += len(rows)
            if len(rows) < limit:
                if settings.burst and not rows and not self._running and not self._completer.backlog():
                    break
                await self._idle_wait()

    async def _with_trace_contexts(self, claimed: list[Claimed]) -> list[Claimed]:
        """The runs with their trace context, read in one query (tracing only: the claim itself
        stays as narrow as it is when tracing is off)."""
        try:
            rows = await self._execute("trace_contexts", {"ids": [run.id for run in claimed]})
        except DB_ERRORS as exc:  # the runs are claimed: they run, in traces of their own
            log.warning("could not read the trace contexts of %d claimed run(s): %s", len(claimed), exc)
            return claimed
        found = dict(rows)
        return [replace(run, trace_context=found[run.id]) if run.id in found else run for run in claimed]

    async def _idle_wait(self) -> None:
        """Sleep until a notification, a freed slot in burst mode, or the poll interval."""
        waits = [asyncio.ensure_future(self._wake.wait())]
        if self.settings.burst:
            waits.append(asyncio.ensure_future(self._slot_free.wait()))
        self._slot_free.clear()
        _, pending = await asyncio.wait(waits, timeout=self.settings.poll_interval,
                                           return_when=asyncio.FIRST_COMPLETED)
        for waiter in pending:
            waiter.cancel()

    def _start(self, run: Claimed) -> None:
        ctx = RunContext(run.id, run.task, run.attempt, self.id, self.app, _writer=self._steps)
        self.metrics.inc("pgqueue_runs_started_total", task=run.task, queue=run.queue or "")
        task = asyncio.create_task(self._execute_run(run, ctx), name=f"run-{run.id}")
        self._running[run.id] = _Running(run, ctx, task)

    async def _execute_run(self, run: Claimed, ctx: RunContext) -> None:
        started = time.monotonic()
        try:
            outcome = await self._executor.run(run, ctx)
            self.metrics.observe("pgqueue_run_seconds", time.monotonic() - started, task=run.task,
                                 queue=run.queue or "")
            self.metrics.inc("pgqueue_runs_finished_total", task=run.task, queue=run.queue or "",
                             outcome=outcome.attempt_outcome if outcome else "suspended")
            if outcome is not None:
                self._completer.add(replace(outcome, logs=ctx.logs_text()))
        except asyncio.CancelledError:
            pass  # handed back by _shutdown, or the lease was lost
        except Exception:
            log.exception("run %d: unexpected error in the worker", run.id)
        finally:
            self._running.pop(run.id, None)
            self._slot_free.set()

    async def _hand_back(self, runs: list[Claimed]) -> None:
        params = {"worker": self.id, "ids": [r.id for r in runs], "attempts": [r.attempt for r in runs]}
        for failures in range(1, 6):
            try:
                await self._execute("hand_back", params)
                return
            except DB_ERRORS as exc:
                log.warning("handing runs back failed: %s", exc)
                await self._backoff(failures)
        log.error("could not hand back runs %s; they are retried when their lease expires", params["ids"])

    # -- background loops ------------------------------------------------------------------

    async def _listen_loop(self) -> None:
        failures = 0
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(self.app.dsn, autocommit=True) as conn:
                    await conn.execute(query("worker", "listen_ready"))
                    failures = 0
                    self._wake.set()  # something may have arrived while we were not listening
                    async for note in conn.notifies():
                        if note.payload in self.settings.queues:
                            self._wake.set()
            except DB_ERRORS as exc:
                failures += 1
                if failures == 1:
                    log.warning("lost the notification connection (%s); polling until it is back", exc)
                await self._backoff(failures)

    def _held(self) -> tuple[list[int], list[int]]:
        held = {r.run.id: r.run.attempt for r in self._running.values()}
        held.update({o.run_id: o.attempt for o in self._completer.pending()})
        return list(held), list(held.values())

    async def _heartbeat_loop(self) -> None:
        failures = 0
        while True:
            await asyncio.sleep(self.settings.heartbeat if not failures else min(1.0, self.settings.heartbeat))
            ids, attempts = self._held()
            try:
                rows = await self._execute("heartbeat", {"worker": self.id, "lease_s": self.settings.lease,
                                                         "ids": ids, "attempts": attempts})
                self.metrics.inc("pgqueue_heartbeats_total")
                failures = 0
            except DB_ERRORS as exc:
                failures += 1
                if failures == 1:
                    log.warning("heartbeat failed: %s", exc)
                continue
            self._apply_heartbeat(set(ids), dict(rows))

    def _apply_heartbeat(self, sent: set[int], answer: dict[int, bool]) -> None:
        for run_id, entry in list(self._running.items()):
            if run_id not in sent or entry.task.done():
                continue  # claimed after the heartbeat was sent
            if run_id not in answer:
                log.warning("run %d: lease lost (rescued by another worker); abandoning this attempt", run_id)
                entry.ctx._cancel.set()
                entry.task.cancel()
            elif answer[run_id] and not entry.ctx.cancel_requested:
                log.info("run %d: cancellation requested", run_id)
                entry.ctx._cancel.set()
                entry.task.cancel()  # async tasks stop at their next await; sync ones see the flag

    async def _maintenance_loop(self) -> None:
        interval = max(0.2, self.settings.lease / 3)
        while True:
            await asyncio.sleep(interval * (0.75 + random.random() / 2))
            try:
                rescued = await self._execute("rescue", {"max_recoveries": self.settings.max_recoveries})
                expired = await self._execute("expire", {})
            except DB_ERRORS as exc:
                log.debug("maintenance skipped: %s", exc)
                continue
            for run_id, status in rescued:
                log.warning("run %d: its worker was lost; %s", run_id,
                            "queued again" if status == "queued" else "marked dead after too many recoveries")
            if expired:
                log.warning("%d run(s) expired before starting (schedule-to-start)", len(expired))

    async def _render_metrics(self) -> str:
        try:
            gauges = await self.app.execute_async(gauges_op())
        except DB_ERRORS as exc:
            log.warning("metrics without database gauges: %s", exc)
            gauges = {}
        return self.metrics.render(gauges)

    async def _cron_loop(self) -> None:
        """Fire due cron ticks. Every worker does it; row locks make each tick fire once."""
        while True:
            await asyncio.sleep(min(1.0, self.settings.poll_interval) * (0.75 + random.random() / 2))
            try:
                fired = await self.app.execute_async(fire_due_op(), transaction=True)
            except DB_ERRORS as exc:
                log.debug("cron pass skipped: %s", exc)
                continue
            for event in fired:
                if event.problem:
                    log.error("schedule %r disabled: %s", event.schedule, event.problem)
                else:
                    log.info("cron %s: tick %s -> run %s", event.schedule, event.tick.isoformat(), event.run_id)
