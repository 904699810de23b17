"""The application object: a registry of tasks and the database they run on."""

from __future__ import annotations

import asyncio
import contextlib
import json
import select
import threading
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any, ParamSpec, TypeVar, cast, overload

import psycopg
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from ._codec import InputCodec
from ._ops import Op, ServerEndedConnection, Statement, ended_by_server, run_async, run_sync, start
from ._sql import query
from .admin import cancel_op, replay_op, reschedule_op, set_queue_paused_op
from .config import connect, connect_async, require_dsn
from .cron import Schedule, ScheduleInfo, add_op, delete_op, list_op, set_enabled_op, trigger_op
from .durable import send_event_op
from .errors import ConfigurationError, InvalidInput, TaskDefinitionError, UnknownTask
from .flow import (
    Concurrency,
    RateLimit,
    RateLimitDefinition,
    delete_concurrency_op,
    hold_op,
    registration,
    set_concurrency_op,
    set_rate_limit_op,
    sync_limits_op,
)
from .migrations import check_schema_op, migrate
from .retry import Retry
from .runs import AsyncRunHandle, EnqueueOptions, RunHandle, enqueue_op, to_json_text
from .task import Task, TaskSettings
from .workflow import Workflow

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")


class _TaskDecorator:
    """What `@app.task(...)` returns: typed so that `Task[P, R]` keeps the function's signature."""

    def __init__(self, app: PgQueue, options: dict[str, Any]) -> None:
        self.app = app
        self.options = options

    @overload
    def __call__(self, fn: Callable[P, Coroutine[Any, Any, R]]) -> Task[P, R]: ...
    @overload
    def __call__(self, fn: Callable[P, R]) -> Task[P, R]: ...

    def __call__(self, fn: Callable[P, Any]) -> Task[P, Any]:
        return self.app._register(fn, **self.options)


class PgQueue:
    """Tasks and the database they run on.

        app = PgQueue()            # DSN from PGQUEUE_DSN or DATABASE_URL

        @app.task(queue="llm", retry=Retry(max_attempts=5))
        async def summarize(doc: Document) -> Summary: ...

        summarize.enqueue(Document(id=42))
    """

    def __init__(self, dsn: str | None = None, *, pool_size: int = 4) -> None:
        self._dsn = dsn
        self.pool_size = pool_size
        self.tasks: dict[str, Task[Any, Any]] = {}
        self.schedules: dict[str, Schedule] = {}
        self.rate_limits: dict[str, RateLimitDefinition] = {}
        self._pool: ConnectionPool | None = None
        self._async_pool: AsyncConnectionPool | None = None
        self._async_lock: asyncio.Lock | None = None
        self._lock = threading.Lock()

    # -- declaring tasks -------------------------------------------------------------------

    @overload
    def task(self, fn: Callable[P, Coroutine[Any, Any, R]], /) -> Task[P, R]: ...
    @overload
    def task(self, fn: Callable[P, R], /) -> Task[P, R]: ...
    @overload
    def task(self, *, name: str | None = None, queue: str = "default", priority: int = 0,
             retry: Retry | None = None, timeout: float | None = None,
             schedule_to_start: float | None = None, on_event: str | Sequence[str] = (),
             concurrency: Concurrency | None = None,
             rate_limits: Sequence[RateLimit] | RateLimit = ()) -> _TaskDecorator: ...

    def task(self, fn: Callable[..., Any] | None = None, /, **options: Any) -> Any:  # type: ignore[misc]
        """Declare a task. Use as `@app.task` or `@app.task(queue=..., retry=..., ...)`.

        name: defaults to the function's name; queue, priority (higher runs first);
        retry: a `Retry` policy (default 3 attempts, exponential backoff with jitter);
        timeout: start-to-close seconds per attempt; schedule_to_start: seconds a run may
        wait before it fails as expired; on_event: event names that start a run of this task
        with the event's payload as input; concurrency: a `Concurrency` rule (at most N running
        runs per key); rate_limits: `RateLimit` rules (units taken before a run starts).
        """
        if fn is not None:
            return self._register(fn)
        return _TaskDecorator(self, options)

    def _register(self, fn: Callable[..., Any], *, name: str | None = None,
                  retry: Retry | None = None, codec: InputCodec | None = None, **options: Any) -> Task[Any, Any]:
        if not callable(fn):
            raise TaskDefinitionError(f"@app.task decorates a function, not {fn!r}")
        # The bare function name reads well from SQL (`pgqueue.enqueue('summarize', ...)`)
        # and survives moving the function to another module; clashes are refused below.
        task_name = name or fn.__name__
        settings = TaskSettings(name=task_name, retry=retry or Retry(), **options)
        if task_name in self.tasks and self.tasks[task_name].fn is not fn:
            raise TaskDefinitionError(f"two tasks are named {task_name!r}; give one of them name=...")
        task: Task[Any, Any] = Task(self, fn, settings, codec)
        self.tasks[task_name] = task
        return task

    def workflow(self, name: str, *, queue: str = "default", on_failure: Task[Any, Any] | None = None,
                 concurrency: Concurrency | None = None) -> Workflow:
        """Declare a DAG workflow; add nodes with `@wf.node(parents=[...])` (see `pgqueue.workflow`).

        on_failure: a task started with `{"workflow_run": id, "errors": {node: error}}` when a
        node fails for good; concurrency: a rule on the workflow's runs (the key comes from the
        workflow's input)."""
        return Workflow(self, name, queue=queue, on_failure=on_failure, concurrency=concurrency)

    def rate_limit(self, name: str, *, limit: float, per: float = 1.0, burst: float | None = None) -> None:
        """Declare a rate limit: `limit` units per `per` seconds across all workers, with bursts up
        to `burst` units (default `limit`). Tasks take units with `rate_limits=[RateLimit(name)]`.
        Workers write it to `pgqueue.rate_limits` at start; a runtime change is never overwritten."""
        if name in self.rate_limits:
            raise TaskDefinitionError(f"two rate limits are named {name!r}")
        self.rate_limits[name] = RateLimitDefinition(name, limit, per, burst)

    def schedule(self, task: Task[Any, Any] | str, expression: str, *, name: str | None = None,
                 input: Mapping[str, Any] | Any = None, timezone: str = "UTC", queue: str | None = None,
                 priority: int | None = None, misfire: str = "run_once",
                 catch_up_limit: int | None = None) -> Schedule:
        """Declare a cron schedule for a task; workers write it to `pgqueue.cron_schedules` at start.

        expression: 5 fields, or 6 with seconds first; misfire: what to do with ticks missed while
        no worker ran — "skip" (fire only a tick less than a minute late), "run_once" (one run for
        the latest missed tick) or "catch_up" (every missed tick, at most `catch_up_limit`)."""
        task_name = task if isinstance(task, str) else task.name
        data: dict[str, Any] = {}
        if input is not None:
            known = self.tasks.get(task_name)
            data = json.loads(known.codec.encode_item(input)) if known else dict(input)
        schedule = Schedule(name or task_name, expression, task_name, data, timezone, queue, priority, misfire,
                            catch_up_limit)
        if schedule.name in self.schedules:
            raise TaskDefinitionError(f"two schedules are named {schedule.name!r}; give one of them name=...")
        self.schedules[schedule.name] = schedule
        return schedule

    # -- cron schedules at runtime (edits here are never overwritten by code) ---------------

    def cron_add(self, schedule: Schedule) -> None:
        self.execute(add_op(schedule, known_task=schedule.task in self.tasks), transaction=True)

    def cron_list(self) -> list[ScheduleInfo]:
        return self.execute(list_op())

    def cron_pause(self, name: str) -> None:
        self.execute(set_enabled_op(name, False))

    def cron_resume(self, name: str) -> None:
        self.execute(set_enabled_op(name, True))

    def cron_delete(self, name: str) -> None:
        self.execute(delete_op(name))

    def cron_trigger(self, name: str) -> RunHandle[Any]:
        """Run the schedule's task now, outside its ticks."""
        return RunHandle(self, self.execute(trigger_op(name)))

    def get_task(self, name: str) -> Task[Any, Any]:
        try:
            return self.tasks[name]
        except KeyError:
            known = ", ".join(sorted(self.tasks)) or "none"
            raise UnknownTask(f"no task named {name!r} in this app (known: {known})") from None

    # -- database --------------------------------------------------------------------------

    @property
    def dsn(self) -> str:
        return require_dsn(self._dsn)

    def migrate(self) -> list[str]:
        return migrate(self.dsn)

    def register_tasks(self) -> None:
        """Write the task defaults (queue, priority, how to compute flow-control keys) and the
        declared limits to the database: plain-SQL enqueues and claims rely on them."""
        def op() -> Op[None]:
            limits: list[tuple[str, Concurrency]] = []
            for task in self.tasks.values():
                s = task.settings
                s2s = None if s.schedule_to_start is None else f"{s.schedule_to_start} seconds"
                yield Statement(query("runs", "register_task"), (s.name, s.queue, s.priority, s2s))
                yield Statement(query("flow", "register_flow"),
                                {"task": s.name, **registration(s.concurrency, s.rate_limits)})
                for event in (s.on_event,) if isinstance(s.on_event, str) else s.on_event:
                    yield Statement(query("durable", "subscribe"), (event, s.name))
                if s.concurrency is not None:
                    limits.append((s.name, s.concurrency))
                for rule in s.rate_limits:
                    if rule.name not in self.rate_limits:
                        raise TaskDefinitionError(
                            f"task {s.name!r} uses rate limit {rule.name!r}, which is not declared: add "
                            f"app.rate_limit({rule.name!r}, limit=..., per=...)")
            yield from sync_limits_op(limits, list(self.rate_limits.values()))
        self.execute(op(), transaction=True)

    # -- flow control at runtime (never overwritten by code) --------------------------------

    def set_concurrency_limit(self, task: str, max_running: int, *, key: str = "*",
                              strategy: str | None = None) -> None:
        """Change how many runs of `task` may run at once per key: `key="*"` (the default for every
        key) or one key, e.g. a tenant on a bigger plan. Takes effect at the next claim."""
        self.execute(set_concurrency_op(task, max_running, key, strategy))

    def delete_concurrency_limit(self, task: str, *, key: str = "*") -> bool:
        """Remove a key's own limit (the task's default applies again); False if there was none."""
        return self.execute(delete_concurrency_op(task, key))

    def set_rate_limit(self, name: str, *, limit: float, per: float = 1.0, burst: float | None = None,
                       key: str = "") -> None:
        """Define or change a rate limit at runtime; with `key`, only that key's bucket."""
        self.execute(set_rate_limit_op(name, limit, per, burst, key))

    def hold_rate_limit(self, name: str, seconds: float, *, key: str = "") -> datetime:
        """No worker starts a run needing this limit (key) for `seconds` (a provider's Retry-After)."""
        until: datetime = self.execute(hold_op(name, seconds, key))
        return until

    async def hold_rate_limit_async(self, name: str, seconds: float, *, key: str = "") -> datetime:
        until: datetime = await self.execute_async(hold_op(name, seconds, key))
        return until

    def pool(self) -> ConnectionPool:
        with self._lock:
            if self._pool is None:
                dsn = self.dsn
                with connect(dsn, autocommit=True) as conn:  # clear errors before the pool retries
                    run_sync(conn, check_schema_op())
                self._pool = ConnectionPool(dsn, min_size=1, max_size=self.pool_size,
                                            kwargs={"autocommit": True}, open=True, name="pgqueue",
                                            check=check_idle_connection)
            return self._pool

    async def async_pool(self) -> AsyncConnectionPool:
        if self._async_pool is None:
            if self._async_lock is None:
                self._async_lock = asyncio.Lock()
            async with self._async_lock:  # many tasks may ask at once: create one pool
                if self._async_pool is None:
                    dsn = self.dsn
                    async with await connect_async(dsn, autocommit=True) as conn:
                        await run_async(conn, check_schema_op())
                    pool = AsyncConnectionPool(dsn, min_size=1, max_size=self.pool_size,
                                               kwargs={"autocommit": True}, open=False, name="pgqueue-async",
                                               check=check_idle_connection_async)
                    await pool.open()
                    self._async_pool = pool
        return self._async_pool

    def execute(self, op: Op[T], connection: psycopg.Connection[Any] | None = None,
                transaction: bool = False) -> T:
        """Run an operation on `connection` (the caller's transaction) or a pooled connection."""
        first, value = start(op)
        if first is None:
            return cast(T, value)
        if connection is not None:  # the caller's transaction: never retried here
            try:
                with connection.transaction() if transaction else contextlib.nullcontext():
                    return run_sync(connection, op, first)
            except ServerEndedConnection as exc:
                raise _cause(exc) from None
        # A pooled connection the server had just ended (every one of them, after a restart):
        # the pool drops it and the operation, which never ran, goes to the next connection.
        for tries_left in range(self.pool_size, -1, -1):
            try:
                with self.pool().connection() as conn, conn.transaction() if transaction else contextlib.nullcontext():
                    return run_sync(conn, op, first)
            except (ServerEndedConnection, psycopg.OperationalError) as exc:
                if not tries_left or not _ended_before_start(exc):
                    raise _cause(exc) from None
        raise AssertionError("unreachable")

    async def execute_async(self, op: Op[T], connection: psycopg.AsyncConnection[Any] | None = None,
                            transaction: bool = False) -> T:
        first, value = start(op)
        if first is None:
            return cast(T, value)
        if connection is not None:
            try:
                if transaction:
                    async with connection.transaction():
                        return await run_async(connection, op, first)
                return await run_async(connection, op, first)
            except ServerEndedConnection as exc:
                raise _cause(exc) from None
        pool = await self.async_pool()
        for tries_left in range(self.pool_size, -1, -1):
            try:
                async with pool.connection() as conn:
                    if transaction:
                        async with conn.transaction():
                            return await run_async(conn, op, first)
                    return await run_async(conn, op, first)
            except (ServerEndedConnection, psycopg.OperationalError) as exc:
                if not tries_left or not _ended_before_start(exc):
                    raise _cause(exc) from None
        raise AssertionError("unreachable")

    @contextlib.contextmanager
    def listen_connection(self) -> Iterator[psycopg.Connection[Any]]:
        """A dedicated connection for LISTEN (never a pooled one: it would keep listening)."""
        with connect(self.dsn, autocommit=True) as conn:
            yield conn

    async def listen_connection_async(self) -> psycopg.AsyncConnection[Any]:
        return await connect_async(self.dsn, autocommit=True)

    # -- enqueue by name ---------------------------------------------------------------------

    def enqueue(self, task: str, input: Mapping[str, Any] | None = None, *,
                connection: psycopg.Connection[Any] | None = None, **options: Any) -> RunHandle[Any]:
        """Enqueue a run of a task by name, e.g. one defined in another service.

        A task of this app is validated against its model; for any other name the input
        must be a JSON object, and the queue and priority default to those the task's
        workers registered in the database.
        """
        return self.enqueue_many(task, [input or {}], connection=connection, **options)[0]

    def enqueue_many(self, task: str, inputs: Iterable[Mapping[str, Any]], *,
                     connection: psycopg.Connection[Any] | None = None,
                     idempotency_keys: Sequence[str] | None = None,
                     progress: Callable[[int], None] | None = None, **options: Any) -> list[RunHandle[Any]]:
        if task in self.tasks:
            call = self.tasks[task].options(connection=connection, **options)
            return call.enqueue_many(inputs, idempotency_keys=idempotency_keys, progress=progress)
        texts = [to_json_text(_json_object(item, i)) for i, item in enumerate(inputs)]
        op = enqueue_op(task, texts, EnqueueOptions(**options), idempotency_keys=idempotency_keys,
                        progress=progress)
        return [RunHandle(self, run_id, created)
                for run_id, created in self.execute(op, connection, transaction=True)]

    def cancel(self, run_id: int) -> str:
        """Cancel a run and what it spawned: 'cancelled' if it had not started,
        'cancel_requested' if it is running."""
        for tries_left in (2, 1, 0):
            try:
                return self.execute(cancel_op(run_id))
            except psycopg.errors.DeadlockDetected:
                # a worker finishing a child at that moment; cancelling is safe to repeat
                if not tries_left:
                    raise
        raise AssertionError("unreachable")

    def retry(self, run_id: int) -> str:
        """Queue a failed, cancelled or dead run again with a fresh retry budget; its completed
        steps are kept, so it resumes from the step that failed."""
        return self.execute(replay_op(run_id, from_start=False))

    def pause_queue(self, queue: str) -> None:
        """Stop workers from claiming the queue's runs (they stay queued) until resumed."""
        self.execute(set_queue_paused_op(queue, True))

    def resume_queue(self, queue: str) -> None:
        self.execute(set_queue_paused_op(queue, False))

    def reschedule(self, run_id: int, run_at: datetime) -> str:
        """Move a queued run (one scheduled for later, say) to another time."""
        if run_at.tzinfo is None:
            raise ConfigurationError("run_at must be timezone-aware, e.g. datetime.now(timezone.utc)")
        return self.execute(reschedule_op(run_id, run_at))

    def replay(self, run_id: int, *, from_start: bool = False) -> str:
        """Like `retry`; `from_start=True` discards the completed steps first."""
        return self.execute(replay_op(run_id, from_start=from_start))

    def send_event(self, name: str, key: str = "", payload: Any = None) -> int:
        """Send an event: runs waiting for (name, key) wake up with `payload`, tasks subscribed
        to `name` start with it as input. Returns how many waiting runs were woken."""
        return self.execute(send_event_op(name, key, payload))

    async def send_event_async(self, name: str, key: str = "", payload: Any = None) -> int:
        return await self.execute_async(send_event_op(name, key, payload))

    def run(self, run_id: int) -> RunHandle[Any]:
        """A handle on an existing run."""
        return RunHandle(self, run_id)

    def run_async(self, run_id: int) -> AsyncRunHandle[Any]:
        return AsyncRunHandle(self, run_id)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    async def aclose(self) -> None:
        if self._async_pool is not None:
            await self._async_pool.close()
            self._async_pool = None
        self.close()

    def __enter__(self) -> PgQueue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> PgQueue:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def _ended_before_start(exc: BaseException) -> bool:
    """The operation never ran: its first statement (or the BEGIN before it) met a connection the
    server had ended."""
    return isinstance(exc, ServerEndedConnection) or ended_by_server(exc)


def _cause(exc: BaseException) -> BaseException:
    return exc.__cause__ if isinstance(exc, ServerEndedConnection) and exc.__cause__ else exc


def _server_spoke(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> bool:
    """Whether an idle connection has something to read: the server ended it, or said something."""
    if conn.closed or conn.broken:
        return True
    readable, _, _ = select.select([conn.fileno()], [], [], 0)
    return bool(readable)


def check_idle_connection(conn: psycopg.Connection[Any]) -> None:
    """Pool checkout check: a connection ended by a server restart or pg_terminate_backend is
    readable (it got the termination notice or EOF), so only then is it pinged (and replaced if
    dead). Costs no round trip for healthy connections."""
    if _server_spoke(conn):
        ConnectionPool.check_connection(conn)


async def check_idle_connection_async(conn: psycopg.AsyncConnection[Any]) -> None:
    if _server_spoke(conn):
        await AsyncConnectionPool.check_connection(conn)


def _json_object(item: object, index: int) -> Mapping[str, Any]:
    if not isinstance(item, Mapping):
        raise InvalidInput(f"input #{index} is a {type(item).__name__}, not a JSON object of the task's arguments")
    return item
