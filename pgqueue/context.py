"""What a running task can know and ask for: its run, cancellation, logs, and durable execution."""

from __future__ import annotations

import contextlib
import contextvars
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar, cast, overload

from .database import Database, engine_call
from .durable import CheckpointWriter, Durable, raise_if_suspended
from .errors import ConfigurationError, PgQueueError, TaskCancelled
from .inbox import Message, bind, check_receive, publish_state, publish_state_sync, receive_op
from .ops import Op
from .retry import Retry
from .sessions import SessionState
from .steps import current_step, run_step, run_step_sync
from .streams import StreamSink, check_progress, encode_chunk
from .usage import report_usage_op, usage_units
from .versioning import deprecate_patch_op, patched_op

if TYPE_CHECKING:
    from .task import Task

T = TypeVar("T")

#: logs kept per attempt; beyond it, lines are dropped (and counted)
MAX_TASK_LOG_BYTES = 64 * 1024


@dataclass
class RunContext:
    """The run a task is executing; get it with `pgqueue.current_run()`.

    Besides the run's identity and its cancellation flag, it offers durable execution:
    checkpointed steps, durable sleep and waiting for events. Async tasks use `step`,
    `sleep`, `wait_for_event`; sync tasks use the `_sync` twins.
    """

    run_id: int
    task: str
    attempt: int
    worker_id: str
    db: Database | None = field(default=None, repr=False)
    # a plain flag, not a threading.Event (a lock and a condition built per run): it is only
    # set by the worker and read by the task, and nothing waits on it
    _cancel: bool = field(default=False, repr=False)
    _durable: Durable | None = field(default=None, repr=False)
    _writer: CheckpointWriter | None = field(default=None, repr=False)
    _stream: StreamSink | None = field(default=None, repr=False)
    _session: SessionState | None = field(default=None, repr=False)
    _logs: list[str] = field(default_factory=list, repr=False)
    _log_bytes: int = field(default=0, repr=False)
    _logs_dropped: int = field(default=0, repr=False)
    _last_heartbeat: float = field(default_factory=time.monotonic, repr=False)

    @property
    def logger(self) -> logging.Logger:
        """A logger for the task; like any `logging` call made while the run executes, what it
        logs is kept with the attempt (see `pgqueue runs show`)."""
        return logging.getLogger(f"pgqueue.task.{self.task}")

    def _capture(self, line: str) -> None:
        size = len(line.encode()) + 1
        if self._log_bytes + size > MAX_TASK_LOG_BYTES:
            self._logs_dropped += size
            return
        self._logs.append(line)
        self._log_bytes += size

    def logs_text(self) -> str | None:
        if not self._logs and not self._logs_dropped:
            return None
        dropped = f"\n[{self._logs_dropped} more bytes of logs dropped]" if self._logs_dropped else ""
        return "\n".join(self._logs) + dropped

    @property
    def cancel_requested(self) -> bool:
        """True once someone asked to cancel this run; sync tasks should check it and return."""
        return self._cancel

    def heartbeat(self) -> None:
        """Say the attempt is alive. With the task's `heartbeat_timeout`, an attempt silent for
        longer is presumed hung: the worker fails it (HeartbeatTimeout) and the retry policy
        applies. Call it between the chunks of a long call, from async or sync code (no I/O)."""
        self._last_heartbeat = time.monotonic()

    def silent_for(self) -> float:
        """Seconds since the attempt started or last called `heartbeat()`."""
        return time.monotonic() - self._last_heartbeat

    def raise_if_cancelled(self) -> None:
        if self._cancel:
            raise TaskCancelled(f"run {self.run_id} was cancelled")

    def request_cancel(self) -> None:
        """Set by the worker when someone asked to cancel the run (or its lease was lost)."""
        self._cancel = True

    def durable(self) -> Durable:
        if self._durable is None:
            self._durable = Durable(self.run_id, self.attempt, self.worker_id, self._writer, self.logs_text)
        return self._durable

    def database(self) -> Database:
        if self.db is None:
            raise PgQueueError("durable steps need a run executed by a worker")
        return self.db

    # -- session state (pgqueue/sessions.py) --------------------------------------------------

    @property
    def state(self) -> dict[str, Any]:
        """The durable state of this session invocation's key (`@app.session` only): a dict of
        JSON values, loaded when the attempt starts and saved after each step, with each sleep or
        wait, and before the outcome. Change it outside steps, from the input and from steps'
        results: a retried attempt replays from the state its invocation started with."""
        if self._session is None:
            raise PgQueueError(f"ctx.state is for sessions only; task {self.task!r} is not one "
                               "(declare it with @app.session(name, key=...))")
        return self._session.data

    @state.setter
    def state(self, value: dict[str, Any]) -> None:
        if self._session is None or not isinstance(value, dict):
            raise PgQueueError("ctx.state can be set to a dict, in a session only")
        self._session.data = value

    def _state_save(self) -> Op[None] | None:
        """The save of the session state, unless a replay has not caught up yet (it would save
        an older state than the one stored)."""
        if self._session is None or (self._durable is not None and self._durable.replaying):
            return None
        return self._session.save_op()

    async def save_state(self) -> None:
        """Save `ctx.state` now (it is saved after each step and before the outcome anyway)."""
        op = self._state_save()
        if op is not None:
            with engine_call(f"run {self.run_id}'s session state"):
                await self.database().execute_async(op)

    def save_state_sync(self) -> None:
        op = self._state_save()
        if op is not None:
            with engine_call(f"run {self.run_id}'s session state"):
                self.database().execute(op)

    # -- streaming and progress --------------------------------------------------------------

    def _sink(self) -> StreamSink:
        if self._stream is None:
            raise PgQueueError("streaming and progress need a run executed by a worker (in tests: "
                               "pgqueue.testing.call or drain)")
        return self._stream

    def stream(self, chunk: Any) -> None:
        """Append `chunk` (a str, e.g. LLM tokens, or any JSON value, e.g. partial JSON) to the
        run's stream, for `handle.stream()`, `pgqueue runs tail` and the dashboard to show as it
        comes. Returns at once (from async or sync code): the worker writes chunks in batches,
        in order, before the run suspends or finishes. A chunk over the size limit (64 KiB of
        JSON by default) raises InputTooLarge; past the chunk count limit (100,000 per run by
        default) a later call raises StreamLimitExceeded."""
        sink = self._sink()
        sink.add(self.run_id, self.attempt, encode_chunk(chunk, sink.max_chunk_bytes))

    def progress(self, done: float, total: float | None = None, message: str | None = None) -> None:
        """Report progress: `done` out of `total` (None: unknown), with a short `message`
        (at most 1,000 characters). Only the latest report is kept; returns at once."""
        check_progress(done, total, message)
        self._sink().set_progress(self.run_id, self.attempt, float(done),
                                  None if total is None else float(total), message)

    async def flush_stream(self) -> None:
        """Wait until what this attempt streamed so far is stored (readers can see it); raises
        what refused it."""
        if self._stream is not None:
            with engine_call(f"run {self.run_id}'s stream"):
                await self._stream.flush(self.run_id, self.attempt)

    def flush_stream_sync(self) -> None:
        """`flush_stream` for sync tasks."""
        if self._stream is not None:
            with engine_call(f"run {self.run_id}'s stream"):
                self._stream.flush_sync(self.run_id, self.attempt)

    def _stream_flush(self) -> Callable[[], Awaitable[None]] | None:
        """What a step awaits before its checkpoint: storing what its function streamed."""
        if self._stream is None:
            return None
        sink, run_id, attempt = self._stream, self.run_id, self.attempt
        return lambda: sink.flush(run_id, attempt)

    def _stream_flush_sync(self) -> Callable[[], None] | None:
        if self._stream is None:
            return None
        sink, run_id, attempt = self._stream, self.run_id, self.attempt
        return lambda: sink.flush_sync(run_id, attempt)

    # Each durable operation runs in one transaction; the twins below only block or await it.
    # The stream is flushed first: once the run suspends, this attempt may write nothing more.

    async def _durably(self, op: Op[T]) -> T:
        await self.flush_stream()
        op = _with_state(self._state_save(), op)
        with engine_call(f"run {self.run_id}'s durable operation"):
            done = await self.database().execute_async(op, transaction=True)
        return raise_if_suspended(done)

    def _durably_sync(self, op: Op[T]) -> T:
        self.flush_stream_sync()
        op = _with_state(self._state_save(), op)
        with engine_call(f"run {self.run_id}'s durable operation"):
            done = self.database().execute(op, transaction=True)
        return raise_if_suspended(done)

    # -- steps -----------------------------------------------------------------------------

    @overload
    async def step(self, name: str, fn: Callable[..., Awaitable[T]], *args: Any,
                   retry: Retry | None = None, timeout: float | None = None) -> T: ...
    @overload
    async def step(self, name: str, fn: Callable[..., T], *args: Any,
                   retry: Retry | None = None, timeout: float | None = None) -> T: ...

    async def step(self, name: str, fn: Callable[..., Any], *args: Any,
                   retry: Retry | None = None, timeout: float | None = None) -> Any:
        """Run `fn(*args)` once per run: later attempts get its stored result back.

        `retry`: the step's own policy; a failing step then requeues the run after the step's
        backoff (holding no worker slot) without using up the task's attempts. Without it, a
        failure propagates and the task's policy applies. `timeout`: seconds, async `fn` only.
        Calls in a loop get distinct keys (name#0, name#1, ...).
        """
        value = await run_step(self.database(), self.durable(), name, fn, args, retry, timeout,
                               before_checkpoint=self._stream_flush())
        await self.save_state()
        return value

    def step_sync(self, name: str, fn: Callable[..., T], *args: Any, retry: Retry | None = None) -> T:
        """`step` for sync tasks."""
        value = cast(T, run_step_sync(self.database(), self.durable(), name, fn, args, retry,
                                      before_checkpoint=self._stream_flush_sync()))
        self.save_state_sync()
        return value

    async def step_in_transaction(self, name: str, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run `await fn(conn, *args)` in a transaction that also records the step: the
        database writes `fn` makes on `conn` and the checkpoint commit together, exactly once
        (if the run was taken over meanwhile, both roll back).

        `conn` is a `psycopg.AsyncConnection` of the application's pool with the transaction
        open: run statements on it, never commit, roll back, close or keep it; what `fn`
        returns is the step's result. Sync tasks use `step_in_transaction_sync`, whose `fn`
        gets a `psycopg.Connection`."""
        db, what = self.database(), f"step {name!r} of run {self.run_id}"
        async with contextlib.AsyncExitStack() as stack:
            with engine_call(what):
                conn = await stack.enter_async_context((await db.async_pool()).connection())
            with engine_call(what, conn):  # the commit, or the connection lost under `fn`
                async with conn.transaction():
                    return cast(T, await run_step(db, self.durable(), name, fn, (conn, *args), None, None, conn,
                                                  self._stream_flush()))
        raise AssertionError("unreachable")

    def step_in_transaction_sync(self, name: str, fn: Callable[..., T], *args: Any) -> T:
        """`step_in_transaction` for sync tasks: `fn(conn, *args)` with a `psycopg.Connection`."""
        db, what = self.database(), f"step {name!r} of run {self.run_id}"
        with contextlib.ExitStack() as stack:
            with engine_call(what):
                conn = stack.enter_context(db.pool().connection())
            with engine_call(what, conn), conn.transaction():
                return cast(T, run_step_sync(db, self.durable(), name, fn, (conn, *args), None, conn,
                                             self._stream_flush_sync()))
        raise AssertionError("unreachable")

    # -- usage accounting (usage.py) ----------------------------------------------------------

    async def report_usage(self, tokens: float | None = None, cost: float | None = None, **units: float) -> None:
        """Record what this run (or the step calling it) actually used, e.g. an LLM call's
        `tokens` and `cost`, or any unit by keyword (`input_tokens=812`); amounts >= 0. Written
        at once; a rate limit declared with `usage="tokens"` is charged this instead of the
        estimate its claim took (docs/usage.md)."""
        op = report_usage_op(self.run_id, self.attempt, usage_units(tokens, cost, units), current_step.get())
        with engine_call(f"run {self.run_id}'s usage report"):
            await self.database().execute_async(op)

    def report_usage_sync(self, tokens: float | None = None, cost: float | None = None, **units: float) -> None:
        op = report_usage_op(self.run_id, self.attempt, usage_units(tokens, cost, units), current_step.get())
        with engine_call(f"run {self.run_id}'s usage report"):
            self.database().execute(op)

    # -- versioning of in-flight runs (versioning.py) --------------------------------------

    async def patched(self, patch_id: str) -> bool:
        """True where the run takes the new path of change `patch_id`, False for a run that had
        already passed this point on code without it (it replays the old path). Decided once
        per run and recorded: see docs/versioning.md."""
        return await self._durably(patched_op(self.durable(), patch_id))

    def patched_sync(self, patch_id: str) -> bool:
        return self._durably_sync(patched_op(self.durable(), patch_id))

    async def deprecate_patch(self, patch_id: str) -> None:
        """Only the new path of `patch_id` remains in the code: a run that took the old path
        fails with NonDeterminismError instead of mixing histories."""
        await self._durably(deprecate_patch_op(self.durable(), patch_id))

    def deprecate_patch_sync(self, patch_id: str) -> None:
        self._durably_sync(deprecate_patch_op(self.durable(), patch_id))

    # -- child runs ------------------------------------------------------------------------

    def _spawn_op(self, task: Task[Any, Any], items: Iterable[Any]) -> Op[list[int]]:
        texts = task.encode_many(items)
        return self.durable().spawn_op(task.name, texts, task.settings.queue, task.settings.priority,
                                       task.flow_columns(texts), task.settings.deadline)

    async def spawn(self, task: Task[Any, Any], items: Iterable[Any]) -> list[int]:
        """Enqueue one child run of `task` per item (a model instance or a mapping of its
        arguments), in bulk; returns their ids. Re-executions of this run never spawn twice."""
        return await self._durably(self._spawn_op(task, items))

    def spawn_sync(self, task: Task[Any, Any], items: Iterable[Any]) -> list[int]:
        return self._durably_sync(self._spawn_op(task, items))

    async def gather(self, ids: list[int], *, return_exceptions: bool = False) -> list[Any]:
        """The results of child runs `ids`, in order, once all children of this run have
        finished. Waiting holds no worker slot. Raises ChildRunFailed if any did not succeed;
        with `return_exceptions=True`, a failed child's place holds a `ChildRunError` (its id,
        status and error) instead, as with `asyncio.gather`."""
        return list(cast(list[Any], await self._durably(self.durable().gather_op(ids, return_exceptions))))

    def gather_sync(self, ids: list[int], *, return_exceptions: bool = False) -> list[Any]:
        return list(cast(list[Any], self._durably_sync(self.durable().gather_op(ids, return_exceptions))))

    # -- suspending ------------------------------------------------------------------------

    async def sleep(self, seconds: float) -> None:
        """Suspend the run for `seconds` (database clock). It holds no worker slot and no
        connection meanwhile, and continues on any worker, also after restarts."""
        await self._durably(self.durable().sleep_op(seconds))

    def sleep_sync(self, seconds: float) -> None:
        self._durably_sync(self.durable().sleep_op(seconds))

    async def sleep_until(self, when: datetime) -> None:
        """Suspend the run until `when` (timezone-aware), as the database's clock tells it: the
        worker's own clock plays no part, so a worker whose clock is off wakes it on time."""
        await self._durably(self.durable().sleep_op(0.0, _aware(when)))

    def sleep_until_sync(self, when: datetime) -> None:
        self._durably_sync(self.durable().sleep_op(0.0, _aware(when)))

    async def wait_for_event(self, name: str, key: str = "", *, timeout: float | None = None,
                             default: Any = None) -> Any:
        """Take the next event (name, key) this run has not taken yet and return its payload,
        suspending until one is sent; `default` after `timeout` seconds. Events sent since the
        run was created wait in the run's mailbox, taken in send order, each once per run."""
        return await self._durably(self.durable().wait_op(name, key, timeout, default))

    def wait_for_event_sync(self, name: str, key: str = "", *, timeout: float | None = None,
                            default: Any = None) -> Any:
        return self._durably_sync(self.durable().wait_op(name, key, timeout, default))

    # -- messages and queries (pgqueue/inbox.py) -------------------------------------------------

    async def receive(self, name: str, *, timeout: float | None = None) -> Message | None:
        """Take the next message `name` sent to this run (`app.send` / `app.update`), in send
        order, each once; suspend the run (no slot held) until one comes. None after `timeout`
        seconds without one (0: only look). A replay returns the same message again. Reply to
        an update with `await message.reply(value)`."""
        check_receive(name, timeout)
        message = await self._durably(receive_op(self.durable(), name, timeout))
        return bind(message, self.database(), self.durable().fence)

    def receive_sync(self, name: str, *, timeout: float | None = None) -> Message | None:
        """`receive` for sync tasks (reply with `message.reply_sync(value)`)."""
        check_receive(name, timeout)
        message = self._durably_sync(receive_op(self.durable(), name, timeout))
        return bind(message, self.database(), self.durable().fence)

    async def set_state(self, state: Any) -> None:
        """Publish a small JSON state (at most `pgqueue.max_state_bytes()`, 64 KiB by default)
        that `handle.state()`, `pgqueue runs state` and the dashboard read without waking the
        run; each call replaces the previous state."""
        await publish_state(self.database(), self.durable().fence, state)

    def set_state_sync(self, state: Any) -> None:
        """`set_state` for sync tasks."""
        publish_state_sync(self.database(), self.durable().fence, state)


def _with_state(save: Op[None] | None, op: Op[T]) -> Op[T]:
    """`op` preceded by the session state's save, in its transaction (a suspension commits
    the state the run suspends with)."""
    return op if save is None else _chained(save, op)


def _chained(first: Op[None], then: Op[T]) -> Op[T]:
    yield from first
    return (yield from then)


def _aware(when: datetime) -> datetime:
    if when.tzinfo is None or when.utcoffset() is None:
        raise ConfigurationError(f"sleep_until needs a timezone-aware datetime, got {when.isoformat()}; "
                                 "e.g. datetime(2030, 1, 1, 9, tzinfo=ZoneInfo('Europe/Paris'))")
    return when


_current: contextvars.ContextVar[RunContext] = contextvars.ContextVar("pgqueue_run")


def current_run() -> RunContext:
    """The context of the run being executed (inside a task, sync or async)."""
    try:
        return _current.get()
    except LookupError:
        raise PgQueueError("current_run() is only available inside a task run by a worker; in a test, run the "
                           "task with pgqueue.testing.call(app, task, ...) (see docs/testing.md)") from None


class TaskLogHandler(logging.Handler):
    """Keeps the log records emitted while a run executes with that run's attempt.

    Installed on the root logger by the worker; records logged outside a run pass untouched.
    """

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        ctx = _current.get(None)
        if ctx is not None:
            ctx._capture(self.format(record))
