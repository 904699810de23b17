"""The worker: claims runs in batches, executes them, records outcomes, keeps leases alive.

Services, each on its own loop so one slow part never blocks another (see the modules named
after them): the claim loop here; the listener (wake-ups); the completer (outcomes, batched and
fenced); the step writer (checkpoints, batched); the heartbeat (leases, cancellations); and the
maintenance services: rescuer, expirer, cron firer, pruner. No transaction is held while task code
runs: claim commits, the task runs, the outcome commits.

Connections: the worker's machinery uses a small pool of its own (without prepared statements,
see `Database`), so that task code holding connections (steps in a transaction, say) can never
starve a heartbeat; task code uses the application's pools; the listener holds one more.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

from .. import tracing
from ..app import PgQueue
from ..config import describe_dsn
from ..context import RunContext, TaskLogHandler
from ..database import Database
from ..hooks import AttemptFinished, AttemptStarted, RunFinished, fire
from ..metrics import Metrics, check_binding, gauges_op, serve_metrics
from ..ops import Op, statement
from ..status import RunStatus
from .claimer import Claimed, claim_op, with_trace_contexts_op
from .completer import Completer, Recorded
from .cron_firer import CronFirer
from .executor import Executor, Outcome
from .expirer import Expirer
from .heartbeat import Heartbeat, Held
from .listener import Listener
from .placement import Slots, advertise_op, claim_labels
from .prefetch import ClaimAhead
from .pruner import Pruner
from .rescuer import Rescuer
from .service import DB_ERRORS, Backoff, Service
from .settings import WorkerSettings
from .step_writer import StepWriter
from .stream_writer import StreamWriter, limits_op

log = logging.getLogger("pgqueue.worker")

#: connections of the worker's own pool: claim, completer, step writer, heartbeat, maintenance
MACHINERY_CONNECTIONS = 6
#: seconds the services get to stop once cancelled at shutdown
SERVICE_STOP_TIMEOUT = 5.0
#: seconds a forced exit spends handing runs back before leaving them to their leases
FORCED_EXIT_TIMEOUT = 3.0


@dataclass
class _Running:
    run: Claimed
    ctx: RunContext
    task: asyncio.Task[None]


class Worker:
    def __init__(self, app: PgQueue, settings: WorkerSettings | None = None, *,
                 labels: dict[str, str] | None = None, version: str | None = None) -> None:
        """`labels`, `version`: placement (docs/placement.md), instead of the settings' own."""
        self.app = app
        self.settings = settings or WorkerSettings()
        if labels is not None or version is not None:
            self.settings = replace(self.settings, labels=labels if labels is not None else self.settings.labels,
                                    version=version if version is not None else self.settings.version)
        self._slots = Slots(app, self.settings.concurrency)  # refuses a task needing more slots than it has
        self._labels = claim_labels(self.settings.labels, self.settings.version)
        self.id = str(uuid.uuid4())
        self.db = Database(None, pool_size=MACHINERY_CONNECTIONS,
                           name=f"pgqueue-worker-{self.settings.name}", prepared_statements=False,
                           checkout_timeout=max(2.0, self.settings.lease / 2),
                           listen_dsn=app.db.listen_setting)
        self._threads = ThreadPoolExecutor(self.settings.concurrency, thread_name_prefix="pgqueue-task")
        self._executor = Executor(app, self._threads)
        self._running: dict[int, _Running] = {}
        self._ahead = ClaimAhead(self.settings.prefetch_limit())
        self._wake = asyncio.Event()
        self._slot_free = asyncio.Event()
        self._stopping = asyncio.Event()
        self._completer = Completer(self.db, self.id, on_written=self._slot_free.set,
                                    max_interruptions=self.settings.max_interruptions, on_recorded=self._recorded)
        self._hook_calls: set[asyncio.Task[None]] = set()
        self._steps: StepWriter | None = None
        self._streams: StreamWriter | None = None
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

    async def serve(self) -> None:
        """Run until `request_stop` (or, in burst mode, until nothing is due), then shut down."""
        settings = self.settings
        if settings.metrics_port is not None:
            check_binding(settings.metrics_host, settings.metrics_token)
        self.db.use_dsn(self.app.dsn)  # resolved now: an error here says what to set
        # durable steps of concurrent runs each commit through the app's pools: more connections
        # let their commits share WAL flushes instead of queueing for a few (capped, so that
        # many workers stay within max_connections; the pools only grow on demand)
        self.app.db.pool_size = max(self.app.db.pool_size, min(settings.concurrency, 20))
        await self.db.async_pool()  # checks the schema version first
        try:
            await self.app.db.execute_async(self.app.registry.register_op(), transaction=True)
            await self.db.execute_async(_register_worker_op(self.id, settings))
            await self.db.execute_async(advertise_op(self.id, settings.labels, settings.version))
            log.info("pgqueue worker %s (id %s) started: database %s, queues %s, concurrency %d, tasks: %s",
                     settings.name, self.id, describe_dsn(self.db.dsn), ",".join(settings.queues),
                     settings.concurrency, ", ".join(sorted(self.app.tasks)) or "none")
            _warn_unbounded(self.app)
            _warn_unserved(self.app, settings.queues)
            max_payload = await self.db.execute_async(_max_payload_op())
            self._steps = StepWriter(self.db, self.id, max_payload)
            self._streams = StreamWriter(self.db, self.id, *await self.db.execute_async(limits_op()))
            self._executor.max_payload = max_payload
            await self._serve_with_services(self._steps)
            try:
                await self.db.execute_async(_stop_worker_op(self.id))
            except DB_ERRORS as exc:
                log.warning("could not mark worker %s stopped: %s", settings.name, exc)
        finally:
            self._threads.shutdown(wait=False, cancel_futures=True)
            await self.db.aclose()
        log.info("pgqueue worker %s stopped", settings.name)

    async def _serve_with_services(self, steps: StepWriter) -> None:
        settings = self.settings
        services: list[Service] = [
            Listener(self.db, settings.queues, self._wake),
            Heartbeat(self.db, self.id, settings.lease, settings.heartbeat, self._held, self._apply_heartbeat,
                      self.metrics),
            Rescuer(self.db, settings.lease, settings.max_recoveries),
            Expirer(self.db, settings.lease),
            CronFirer(self.app.db, settings.poll_interval),
            *([Pruner(self.db, settings.prune_interval, settings.prune_batch_size, settings.prune_batches)]
              if settings.prune_interval > 0 else []),
            self._completer,
            steps,
            *([self._streams] if self._streams is not None else []),
        ]
        background = [asyncio.create_task(service.serve(), name=type(service).__name__) for service in services]
        metrics_server = None
        if settings.metrics_port is not None:
            metrics_server = await serve_metrics(settings.metrics_host, settings.metrics_port,
                                                 settings.metrics_token, self._render_metrics)
            log.info("metrics on http://%s:%d/metrics", settings.metrics_host, settings.metrics_port)
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
            # bounded: a service stuck where cancelling cannot reach it must not keep the worker
            # from exiting (its leases expire and other workers take its runs over)
            _, stuck = await asyncio.wait(background, timeout=SERVICE_STOP_TIMEOUT)
            if stuck:
                log.error("services still running after %gs, left behind: %s", SERVICE_STOP_TIMEOUT,
                          ", ".join(sorted(task.get_name() for task in stuck)))

    async def _shutdown(self) -> None:
        held = self._ahead.release_all()
        if held:
            await self._give_back(_release_op(self.id, held), held, "releasing runs claimed ahead")
        if self._running:
            tasks = [r.task for r in self._running.values()]
            await asyncio.wait(tasks, timeout=self.settings.grace_period)
        unfinished = list(self._running.values())
        if unfinished:
            log.warning("grace period over: handing %d unfinished run(s) back to the queue", len(unfinished))
            for entry in unfinished:
                entry.task.cancel()
            await asyncio.wait([e.task for e in unfinished], timeout=SERVICE_STOP_TIMEOUT)
            runs = [e.run for e in unfinished]
            await self._give_back(_hand_back_op(self.id, runs), runs, "handing runs back")
        try:
            await asyncio.wait_for(self._completer.wait_idle(), timeout=max(5.0, self.settings.lease))
        except TimeoutError:
            log.error("%d outcome(s) could not be written before shutdown; those runs are run again after "
                      "their lease expires", len(self._completer.pending()))
        if self._hook_calls:  # on_success / on_failure hooks of the last outcomes written
            await asyncio.wait(self._hook_calls, timeout=SERVICE_STOP_TIMEOUT)

    async def abandon(self, timeout: float = FORCED_EXIT_TIMEOUT) -> None:
        """A forced exit (a second Ctrl-C): hand the runs still held back to the queue and mark
        the worker stopped, within `timeout` seconds, so that neither waits for a lease to expire.
        The fence of the hand-back leaves alone a run whose outcome was written meanwhile."""
        runs = [entry.run for entry in self._running.values()]
        held = self._ahead.release_all()
        try:
            async with asyncio.timeout(timeout):
                if held:
                    await self.db.execute_async(_release_op(self.id, held))
                if runs:
                    await self.db.execute_async(_hand_back_op(self.id, runs))
                await self.db.execute_async(_stop_worker_op(self.id))
        except (TimeoutError, *DB_ERRORS) as exc:
            log.warning("forced exit: could not hand back runs %s or mark the worker stopped (%s); they are "
                        "retried when their lease expires", [r.id for r in runs], exc or "timed out")
            return
        log.warning("forced exit: handed %d running run(s) back to the queue", len(runs))

    async def _give_back(self, op: Op[None], runs: list[Claimed], doing: str) -> None:
        backoff = Backoff(doing)
        for _ in range(5):
            try:
                await self.db.execute_async(op)
                return
            except DB_ERRORS as exc:
                await backoff.sleep_after(exc)
        log.error("%s failed for runs %s; they are retried when their lease expires", doing, [r.id for r in runs])

    # -- claiming and running --------------------------------------------------------------

    async def _claim_loop(self) -> None:
        settings = self.settings
        backoff = Backoff("claiming")
        while not self._stopping.is_set():
            stale = self._ahead.stale()
            if stale:
                await self._give_back(_release_op(self.id, stale), stale, "releasing runs claimed ahead")
            # outcomes waiting to be written count only past a capacity's worth: counting them all
            # made every slot wait for the completer's round trip as well as the claim's; not
            # counting them would let claims outrun the completer, and every batch grow unbounded
            capacity = settings.concurrency + self._ahead.wanted()
            held = self._slots.held(self._running, self._ahead) + max(0, self._completer.backlog() - capacity)
            free = capacity - held
            # while runs in hand keep the slots fed, wait to claim a batch worth a round trip
            if free <= 0 or (self._ahead and free < capacity // 2):
                self._slot_free.clear()
                with contextlib.suppress(TimeoutError):  # runs in hand are checked for staleness
                    await asyncio.wait_for(self._slot_free.wait(), self._ahead.max_wait if len(self._ahead) else None)
                await asyncio.sleep(0)  # let other runs finishing in this tick free their slots too
                continue
            limit = min(free, settings.batch_size) if settings.batch_size else free
            self._wake.clear()
            try:
                started = time.monotonic()
                claimed = await self.db.execute_async(claim_op(self.id, settings.queues, limit, settings.lease,
                                                                      self._labels))
                elapsed = time.monotonic() - started
                self.metrics.inc("pgqueue_claims_total")
                self.metrics.observe("pgqueue_claim_seconds", elapsed)
                self._ahead.claimed_in(elapsed)
            except DB_ERRORS as exc:
                await backoff.sleep_after(exc)
                continue
            backoff.succeeded()
            if claimed and tracing.enabled():
                claimed = await self._with_trace_contexts(claimed)
            self._ahead.hold(claimed)
            self._start_held()
            self.claimed_total += len(claimed)
            if len(claimed) < limit:
                if (settings.burst and not claimed and not self._running and not self._ahead
                        and not self._completer.backlog()):
                    break
                await self._idle_wait()

    async def _with_trace_contexts(self, claimed: list[Claimed]) -> list[Claimed]:
        try:
            return await self.db.execute_async(with_trace_contexts_op(claimed))
        except DB_ERRORS as exc:  # the runs are claimed: they run, in traces of their own
            log.warning("could not read the trace contexts of %d claimed run(s): %s", len(claimed), exc)
            return claimed

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

    def _start_held(self) -> None:
        """Start runs in hand while execution slots are free."""
        while (head := self._ahead.peek()) is not None and self._slots.fits(head, self._running):
            taken = self._ahead.take()
            if taken is not None:
                self._start(*taken)

    def _start(self, run: Claimed, cancelled: bool) -> None:
        ctx = RunContext(run.id, run.task, run.attempt, self.id, self.app.db, _writer=self._steps,
                         _stream=self._streams)
        if cancelled:  # asked while the run waited in hand: the executor records it cancelled
            ctx.request_cancel()
        self.metrics.inc("pgqueue_runs_started_total", task=run.task, queue=run.queue or "")
        task = asyncio.create_task(self._execute_run(run, ctx), name=f"run-{run.id}")
        self._running[run.id] = _Running(run, ctx, task)

    async def _execute_run(self, run: Claimed, ctx: RunContext) -> None:
        started = time.monotonic()
        hooks = self.app.hooks
        try:
            if hooks.before:
                await fire(hooks.before, AttemptStarted(run.id, run.task, run.attempt, run.queue, self.id))
            outcome = await self._executor.execute(run, ctx)
            if self._streams is not None:  # its chunks are stored before its outcome
                await self._streams.finish(run.id, run.attempt)
            took = time.monotonic() - started
            self.metrics.observe("pgqueue_run_seconds", took, task=run.task, queue=run.queue or "")
            self.metrics.inc("pgqueue_runs_finished_total", task=run.task, queue=run.queue or "",
                             outcome=outcome.attempt_outcome if outcome else "suspended")
            if outcome is not None:
                outcome.logs, outcome.task, outcome.queue = ctx.logs_text(), run.task, run.queue
                _log_failed_attempt(run, outcome)
                self._completer.add(outcome)
            if hooks.after:
                await fire(hooks.after, _attempt_finished(run, self.id, outcome, took))
        except asyncio.CancelledError:
            pass  # handed back by _shutdown, or the lease was lost
        except Exception:
            log.exception("run %d: unexpected error in the worker", run.id)
        finally:
            self._running.pop(run.id, None)
            self._ahead.finished()
            if not self._stopping.is_set():
                self._start_held()
            self._slot_free.set()

    def _recorded(self, batch: list[Outcome], applied: dict[int, Recorded]) -> None:
        """Outcomes the completer wrote: log final failures, start the run hooks."""
        self.metrics.inc("pgqueue_outcome_writes_total")
        hooks = self.app.hooks
        with_hooks = hooks.wants_runs()
        for outcome in batch:
            recorded = applied.get(outcome.run_id)
            if recorded is None:
                continue
            if recorded.status == RunStatus.FAILED:
                log.error("run %d (task %s) failed for good at attempt %d: %s: %s", outcome.run_id, outcome.task,
                          outcome.attempt, recorded.error_type, recorded.error_message,
                          exc_info=outcome.exception)
            if with_hooks:
                self._run_hooks(outcome, recorded)

    def _run_hooks(self, outcome: Outcome, recorded: Recorded) -> None:
        hooks = self.app.hooks
        chosen = (hooks.failed if recorded.status == RunStatus.FAILED
                  else hooks.succeeded if recorded.status == RunStatus.SUCCEEDED else [])
        if chosen:
            event = RunFinished(outcome.run_id, outcome.task, outcome.attempt, outcome.queue, self.id,
                                recorded.status, recorded.error_type, recorded.error_message, outcome.exception)
            call = asyncio.create_task(fire(chosen, event))
            self._hook_calls.add(call)
            call.add_done_callback(self._hook_calls.discard)

    # -- heartbeats ------------------------------------------------------------------------

    def _held(self) -> Held:
        # a run may be here twice: an attempt whose outcome is still to be written (the database
        # was away), and a later attempt of it claimed again after a rescue; the later one holds
        # the lease (the earlier outcome will be fenced off)
        held: dict[int, int] = {}
        for run_id, attempt in [*((o.run_id, o.attempt) for o in self._completer.pending()),
                                *((run.id, run.attempt) for run in self._ahead.runs()),
                                *((r.run.id, r.run.attempt) for r in self._running.values())]:
            held[run_id] = max(attempt, held.get(run_id, 0))
        ids = sorted(held)  # rows locked in id order everywhere cannot deadlock
        return ids, [held[run_id] for run_id in ids]

    def _apply_heartbeat(self, sent: set[int], answer: dict[int, bool]) -> None:
        lost = {run.id for run in self._ahead.runs() if run.id in sent and run.id not in answer}
        self._ahead.drop(lost)
        for run in self._ahead.runs():
            if answer.get(run.id):
                self._ahead.cancel(run.id)
        for run_id, entry in list(self._running.items()):
            if run_id not in sent or entry.task.done():
                continue  # claimed after the heartbeat was sent
            if run_id not in answer:
                log.warning("run %d: lease lost (rescued by another worker); abandoning this attempt", run_id)
                entry.ctx.request_cancel()
                entry.task.cancel()
            elif answer[run_id] and not entry.ctx.cancel_requested:
                log.info("run %d: cancellation requested", run_id)
                entry.ctx.request_cancel()
                entry.task.cancel()  # async tasks stop at their next await; sync ones see the flag

    async def _render_metrics(self) -> str:
        try:
            gauges = await self.app.db.execute_async(gauges_op())
        except DB_ERRORS as exc:
            log.warning("metrics without database gauges: %s", exc)
            gauges = {}
        return self.metrics.render(gauges)


# -- what an attempt did ---------------------------------------------------------------------

def _log_failed_attempt(run: Claimed, outcome: Outcome) -> None:
    """A failed attempt that will be retried (a final failure is logged once written)."""
    if outcome.status == RunStatus.QUEUED and (outcome.failed or outcome.interrupted) and outcome.error:
        log.warning("run %d (task %s) attempt %d %s: %s: %s; retrying in %.1fs", run.id, run.task, run.attempt,
                    "interrupted" if outcome.interrupted else "failed", outcome.error.get("type"),
                    outcome.error.get("message"), outcome.delay)


def _attempt_finished(run: Claimed, worker_id: str, outcome: Outcome | None, took: float) -> AttemptFinished:
    if outcome is None:
        return AttemptFinished(run.id, run.task, run.attempt, run.queue, worker_id, "suspended", duration=took)
    error = outcome.error or {}
    return AttemptFinished(run.id, run.task, run.attempt, run.queue, worker_id, outcome.attempt_outcome,
                           outcome.status, error.get("type"), error.get("message"), outcome.exception, took)


# -- the worker's own rows -----------------------------------------------------------------

def _warn_unbounded(app: PgQueue) -> None:
    """Name the tasks whose attempts nothing bounds: a hung call holds its slot for ever."""
    unbounded = sorted(name for name, task in app.tasks.items()
                       if task.settings.timeout is None and task.settings.heartbeat_timeout is None)
    if unbounded:
        log.warning("tasks without a start-to-close timeout: %s. A hung call (a socket read with no "
                    "timeout, say) holds its worker slot until the worker stops: declare "
                    "@app.task(timeout=seconds), or heartbeat_timeout= with ctx.heartbeat() for long calls",
                    ", ".join(unbounded))


def _warn_unserved(app: PgQueue, queues: list[str]) -> None:
    """Name the tasks whose queue this worker does not serve: their runs wait for another worker."""
    unserved = sorted(f"{name} (queue {task.settings.queue})" for name, task in app.tasks.items()
                      if task.settings.queue not in queues)
    if unserved:
        log.warning("this worker serves the queues %s; it never runs these tasks, whose runs wait until a "
                    "worker serving their queue claims them: %s. Add their queues to --queues "
                    "(PGQUEUE_QUEUES) or start a worker with them",
                    ",".join(queues), ", ".join(unserved))


def _register_worker_op(worker_id: str, settings: WorkerSettings) -> Op[None]:
    yield statement("worker.register_worker", {
        "id": worker_id, "name": settings.name, "host": socket.gethostname(), "pid": os.getpid(),
        "queues": settings.queues, "concurrency": settings.concurrency, "lease_s": settings.lease})


def _stop_worker_op(worker_id: str) -> Op[None]:
    yield statement("worker.stop_worker", {"id": worker_id})


def _max_payload_op() -> Op[int]:
    rows = yield statement("durable.max_payload", {})
    return int(rows[0][0])


def _release_op(worker_id: str, runs: list[Claimed]) -> Op[None]:
    """Runs claimed ahead and never started go back to the queue as if never claimed."""
    yield statement("worker.release", {"worker": worker_id, "ids": [r.id for r in runs],
                                       "attempts": [r.attempt for r in runs]}, custom_plan=True)


def _hand_back_op(worker_id: str, runs: list[Claimed]) -> Op[None]:
    """Graceful shutdown: unfinished runs go back to the queue at once, without a failure."""
    yield statement("worker.hand_back", {"worker": worker_id, "ids": [r.id for r in runs],
                                         "attempts": [r.attempt for r in runs]}, custom_plan=True)
