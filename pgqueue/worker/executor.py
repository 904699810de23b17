"""Running one claimed run and turning what happened into an outcome to record."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import json
import logging
import os
import traceback
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from .. import tracing
from ..codec import check_stored, loads_bounded
from ..context import RunContext, _current
from ..errors import (
    DatabaseInterrupted,
    HeartbeatTimeout,
    InvalidInput,
    RateLimited,
    RetryLater,
    RunTakenOver,
    StepRetry,
    Suspended,
    TaskCancelled,
)
from ..status import RunStatus
from .batches import BatchCall
from .claimer import Claimed

if TYPE_CHECKING:
    from ..app import PgQueue
    from ..task import Task

log = logging.getLogger("pgqueue.worker")

MAX_TRACEBACK = 16_000  # characters kept per attempt
#: seconds before an interrupted attempt's run is retried (a restarting server is back soon)
INTERRUPTED_DELAY = 1.0


@dataclass(slots=True)  # built once per attempt; the worker then fills in logs, task and queue in place
class Outcome:
    """What to write for one attempt. `status` is the run's next status ('queued' = retry)."""

    run_id: int
    attempt: int
    status: str
    attempt_outcome: str
    result: str | None = None
    error: dict[str, Any] | None = None
    delay: float = 0.0
    failed: int = 0
    logs: str | None = None
    #: 1: the task asked to retry later (counted against `retry_later_cap` in a row)
    retry_later: int = 0
    retry_later_cap: int = 0
    #: 1: the attempt was cut off by an infrastructure failure (not counted in `failed`)
    interrupted: int = 0
    #: what the task raised, for the worker's log and hooks (never written)
    exception: BaseException | None = field(default=None, compare=False, repr=False)
    #: the run's task and queue, for the worker's log and hooks (set by the worker, never written)
    task: str = ""
    queue: str | None = None


#: folders whose frames lead into a task's code on every attempt (the executor, the event loop,
#: the thread pool): left out of the front of a stored traceback, which then starts at the task
_MACHINERY = (str(Path(__file__).resolve().parents[1]) + os.sep,  # the pgqueue package
              *(str(Path(module.__file__).parent) + os.sep for module in (asyncio, concurrent.futures)
                if module.__file__))


def _from_user_code(tb: TracebackType | None) -> TracebackType | None:
    """The traceback from its first frame outside pgqueue and the standard library's plumbing
    (all of it when every frame is pgqueue's own: then the error is pgqueue's)."""
    first = tb
    while first is not None and first.tb_frame.f_code.co_filename.startswith(_MACHINERY):
        first = first.tb_next
    return first or tb


def error_info(exc: BaseException, with_traceback: bool = True) -> dict[str, Any]:
    info: dict[str, Any] = {"type": type(exc).__name__, "message": str(exc)}
    if with_traceback and exc.__traceback__ is not None:
        text = "".join(traceback.format_exception(type(exc), exc, _from_user_code(exc.__traceback__)))
        info["traceback"] = text[-MAX_TRACEBACK:]
    return info


def failure(run: Claimed, task: Task[Any, Any] | None, exc: BaseException,
            attempt_outcome: str = "failed") -> Outcome:
    """A failed attempt: retried per the task's policy, else the run fails."""
    failures = run.failures + 1
    if task is not None and task.settings.retry.should_retry(failures, exc):
        return Outcome(run.id, run.attempt, RunStatus.QUEUED,
                       "retry" if attempt_outcome == "failed" else attempt_outcome,
                       error=error_info(exc), delay=task.settings.retry.delay(failures), failed=1, exception=exc)
    return Outcome(run.id, run.attempt, RunStatus.FAILED, attempt_outcome, error=error_info(exc), failed=1,
                   exception=exc)


def interrupted(run: Claimed, exc: BaseException) -> Outcome:
    """An attempt cut off by pgqueue's own database work failing (connection lost, server
    restarted): retried soon, counted in the run's `interruptions`, not in its failures."""
    return Outcome(run.id, run.attempt, RunStatus.QUEUED, "interrupted", error=error_info(exc),
                   delay=INTERRUPTED_DELAY, interrupted=1)


def _interruption(exc: BaseException) -> DatabaseInterrupted | None:
    """The DatabaseInterrupted behind `exc`, if the task's code wrapped or re-raised one."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, DatabaseInterrupted):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


async def _watched(call: Coroutine[Any, Any, Any], ctx: RunContext, limit: float) -> Any:
    """Await `call` while the attempt heart-beats at least every `limit` seconds; once silent for
    longer, stop it (an async task is cancelled; a sync one cannot be killed: it is asked to
    stop through `cancel_requested`, and whatever it does later is fenced off) and raise."""
    inner = asyncio.ensure_future(call)
    try:
        while ctx.silent_for() < limit:
            done, _ = await asyncio.wait({inner}, timeout=limit - ctx.silent_for())
            if done:
                return inner.result()
    except BaseException:  # the attempt's timeout, a cancellation, a shutdown: the call stops too
        inner.cancel()
        raise
    ctx.request_cancel()
    inner.cancel()
    raise HeartbeatTimeout(f"run {ctx.run_id}: no ctx.heartbeat() for {ctx.silent_for():.1f}s, more than the "
                           f"task's heartbeat_timeout of {limit:g}s; the attempt is presumed hung. Call "
                           "ctx.heartbeat() more often during long calls, or raise heartbeat_timeout")


def final_failure(run: Claimed, kind: str, message: str, attempt_outcome: str = "failed") -> Outcome:
    """A failure that no retry can fix (unknown task, bad input, expired)."""
    return Outcome(run.id, run.attempt, RunStatus.FAILED, attempt_outcome, error={"type": kind, "message": message})


class Executor:
    """Runs claimed runs: async tasks on the event loop, sync tasks in the worker's thread pool."""

    def __init__(self, app: PgQueue, threads: ThreadPoolExecutor) -> None:
        self.app = app
        self.threads = threads
        #: the database's max_input_bytes, read when the worker starts: a result over it (or nested
        #: too deeply) fails its run here rather than the whole batch of outcomes being written
        self.max_payload: int | None = None

    async def execute(self, run: Claimed, ctx: RunContext) -> Outcome | None:
        """The outcome to record; None when the run already recorded its own (suspended)."""
        with tracing.run_span(run.task, run.id, run.attempt, run.queue, run.trace_context) as span:
            try:
                outcome = await self._outcome_of(run, ctx)
            except BaseException:
                await self._release_batch(run, ctx, None)
                raise
            await self._release_batch(run, ctx, outcome)
            if outcome is None:
                span.finished("suspended")
            else:
                span.finished(outcome.attempt_outcome, outcome.error,
                              failed=outcome.status == RunStatus.FAILED or bool(outcome.failed))
            return outcome

    async def _outcome_of(self, run: Claimed, ctx: RunContext) -> Outcome | None:
        if ctx.cancel_requested:  # while it waited in the worker's hand, before it started
            return self._cancelled(run)
        if run.expired:
            return final_failure(run, "Expired", "the run did not start within its schedule-to-start window",
                                 "expired")
        task = self.app.tasks.get(run.task)
        if task is None:
            known = ", ".join(sorted(self.app.tasks)) or "none"
            return final_failure(run, "UnknownTask",
                                 f"this worker has no task named {run.task!r} (it knows: {known}); "
                                 "deploy the code that defines it, then retry the run")
        batch = None if task.settings.batch is None else BatchCall(task, run, ctx.worker_id)
        args: tuple[Any, ...] = ()
        kwargs: dict[str, Any] = {}
        try:
            if batch is None:
                args, kwargs = task.codec.decode(loads_bounded(run.input, f"the input of run {run.id}"))
        except InvalidInput as exc:
            return final_failure(run, "InvalidInput", str(exc))
        try:
            if batch is not None:  # this run leads a batch: every item's input (worker/batches.py)
                args, kwargs = await batch.arguments(self.app.db)
            call = self._call(task, args, kwargs, ctx)
            if task.settings.heartbeat_timeout is not None:
                call = _watched(call, ctx, task.settings.heartbeat_timeout)
            value = await asyncio.wait_for(call, task.settings.timeout)
            if batch is not None:  # the other items' results written; this run's own is the first
                value = await batch.finish(self.app.db, value, self.max_payload)
            result = json.dumps(task.codec.encode_output(value), separators=(",", ":"))
            check_stored(result, f"the result of run {run.id}", self.max_payload)
        except Suspended:
            return None
        except RunTakenOver as lost:
            log.warning("run %d: %s; this attempt's work is dropped", run.id, lost)
            return None
        except StepRetry as request:  # bounded by the step's own policy
            return Outcome(run.id, run.attempt, RunStatus.QUEUED, "retry", error=error_info(request, False),
                           delay=request.delay)
        except RetryLater as request:
            if isinstance(request, RateLimited):
                await self._hold(run, request)
            return Outcome(run.id, run.attempt, RunStatus.QUEUED, "retry", error=error_info(request, False),
                           delay=request.delay, retry_later=1, retry_later_cap=task.settings.max_retry_later)
        except HeartbeatTimeout as silent:
            return failure(run, task, silent, "heartbeat_timeout")
        except TimeoutError:
            timeout = TimeoutError(f"the attempt ran longer than the task's timeout of {task.settings.timeout:g}s")
            return failure(run, task, timeout, "timeout")
        except asyncio.CancelledError:
            if not ctx.cancel_requested:
                raise  # the worker is shutting down: the run is handed back
            return self._cancelled(run)
        except TaskCancelled:
            return self._cancelled(run)
        except InvalidInput as exc:
            # a result or step output over the limits, a stored value nested too deeply: the same
            # input would fail the same way, so no retry
            return final_failure(run, type(exc).__name__, str(exc))
        except Exception as exc:
            cut_off = _interruption(exc)
            if cut_off is not None:  # the task's code re-raised pgqueue's own database failure
                return interrupted(run, exc)
            return failure(run, task, exc)
        return Outcome(run.id, run.attempt, RunStatus.SUCCEEDED, "succeeded", result=result)

    async def _release_batch(self, run: Claimed, ctx: RunContext, outcome: Outcome | None) -> None:
        """A batch whose leader did not succeed hands its other items back (worker/batches.py)."""
        task = self.app.tasks.get(run.task)
        if task is None or task.settings.batch is None or (outcome and outcome.status == RunStatus.SUCCEEDED):
            return
        try:
            await BatchCall(task, run, ctx.worker_id).release(self.app.db)
        except Exception as exc:  # they come back when their time set aside runs out
            log.warning("run %d: could not hand back the other items of its batch: %s", run.id, exc)

    async def _hold(self, run: Claimed, request: RateLimited) -> None:
        """Put the provider's key on hold for the whole fleet; the run is retried after it anyway."""
        try:
            await self.app.hold_rate_limit_async(request.limit, request.delay, key=request.key)
        except Exception as exc:
            log.warning("run %d: could not hold rate limit %r: %s", run.id, request.limit, exc)

    @staticmethod
    def _cancelled(run: Claimed) -> Outcome:
        return Outcome(run.id, run.attempt, RunStatus.CANCELLED, "cancelled",
                       error={"type": "Cancelled", "message": "the run was cancelled while running"})

    async def _call(self, task: Task[Any, Any], args: tuple[Any, ...], kwargs: dict[str, Any],
                    ctx: RunContext) -> Any:
        token = _current.set(ctx)
        try:
            if task.is_async:
                return await task.fn(*args, **kwargs)
            # copy_context carries current_run() into the thread
            call = contextvars.copy_context().run
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self.threads, lambda: call(task.fn, *args, **kwargs))
        finally:
            _current.reset(token)
