"""Tasks: Python functions declared with `@app.task`, and how they are enqueued."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar, cast

import psycopg

from .codec import InputCodec, check_name
from .control import Batch, BatchCodec, Debounce, Singleton, Throttle, control_spec
from .enqueue import EnqueueOptions, enqueue_op
from .errors import ConfigurationError, TaskDefinitionError
from .flow import Concurrency, RateLimit, flow_columns
from .handles import AsyncRunHandle, RunHandle
from .messages import CancelOn, cancel_rules
from .ops import Op
from .placement import DEFAULT_PREFER_WAIT, task_placement
from .retention import RetentionSpec, task_retention
from .retry import Retry

if TYPE_CHECKING:
    from .database import Database

P = ParamSpec("P")
R = TypeVar("R")

@dataclass(frozen=True)
class TaskSettings:
    """Everything declared with a task besides its function."""

    name: str
    queue: str = "default"
    priority: int = 0
    retry: Retry = field(default_factory=Retry)
    #: start-to-close: seconds an attempt may run before it is failed as timed out
    timeout: float | None = None
    #: schedule-to-start: seconds a run may wait to start before it fails as expired
    schedule_to_start: float | None = None
    #: events that start a run of this task, with the event's payload as input
    on_event: str | Sequence[str] = ()
    #: at most N running runs per key (pgqueue.flow.Concurrency)
    concurrency: Concurrency | None = None
    #: units taken from rate limits before a run starts (pgqueue.flow.RateLimit)
    rate_limits: Sequence[RateLimit] = ()
    #: RetryLater/RateLimited requests in a row after which the run fails (RetryLaterLimit)
    max_retry_later: int = 100
    #: seconds from the run's creation after which it fails as DeadlineExceeded, whatever
    #: attempt it is at (no attempt starts after it; a running one is failed)
    deadline: float | None = None
    #: seconds without `ctx.heartbeat()` after which a running attempt is failed (and retried)
    heartbeat_timeout: float | None = None
    #: how long finished runs are kept: seconds or a timedelta for every final status, or a
    #: mapping of some statuses to ages (the others keep the defaults); None: the defaults
    retention: RetentionSpec | None = None
    #: placement on workers (pgqueue/placement.py, docs/placement.md): labels a worker must have,
    #: labels it prefers (for prefer_wait seconds), the worker slots a run takes, whether later
    #: attempts prefer the last worker, whether a started run stays on the version that started it
    required_labels: Mapping[str, str] | None = None
    preferred_labels: Mapping[str, str] | None = None
    prefer_wait: float = DEFAULT_PREFER_WAIT
    slots: int = 1
    sticky: bool = False
    pin_version: bool = False
    #: enqueue control (pgqueue.control): the last enqueue of a key within a window wins
    debounce: Debounce | None = None
    #: one active run per key: a new enqueue is skipped or replaces it
    singleton: Singleton | None = None
    #: at most N starts per period per key
    throttle: Throttle | None = None
    #: collect enqueues per key and call the function once with their list
    batch: Batch | None = None
    #: events that cancel the task's unfinished runs whose input matches (pgqueue.CancelOn)
    cancel_on: CancelOn | Sequence[CancelOn] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "cancel_on", cancel_rules(self.name, self.cancel_on))
        task_retention(self.name, self.retention)  # refuses a bad age or status now
        task_placement(self)  # refuses bad labels or slots now
        control_spec(self.name, self.debounce, self.singleton, self.throttle, self.batch)  # and bad control
        if self.concurrency is not None and not isinstance(self.concurrency, Concurrency):
            raise TaskDefinitionError(
                f"task {self.name!r}: concurrency= takes pgqueue.Concurrency(key=..., max_running=...), "
                f"not {self.concurrency!r}")
        if isinstance(self.rate_limits, RateLimit):
            object.__setattr__(self, "rate_limits", (self.rate_limits,))
        if not all(isinstance(rule, RateLimit) for rule in self.rate_limits):
            raise TaskDefinitionError(
                f"task {self.name!r}: rate_limits= takes a list of pgqueue.RateLimit(name, units=..., key=...)")
        object.__setattr__(self, "rate_limits", tuple(self.rate_limits))
        if isinstance(self.on_event, str):
            object.__setattr__(self, "on_event", (self.on_event,))
        check_name("task", self.name, TaskDefinitionError)
        check_name("queue", self.queue, TaskDefinitionError)
        for event in self.on_event:
            check_name("event", event, TaskDefinitionError)
        if not -32768 <= self.priority <= 32767:
            raise TaskDefinitionError("priority must be between -32768 and 32767 (higher runs first)")
        if self.max_retry_later < 0:
            raise TaskDefinitionError(f"task {self.name!r}: max_retry_later must be >= 0 (0: never retry later)")
        for label, value in (("timeout", self.timeout), ("schedule_to_start", self.schedule_to_start),
                             ("deadline", self.deadline), ("heartbeat_timeout", self.heartbeat_timeout)):
            if value is not None and value <= 0:
                raise TaskDefinitionError(f"task {self.name!r}: {label} must be a positive number of seconds")


class TaskCall(Generic[P, R]):
    """A task with enqueue options bound: `task.options(priority=5).enqueue(...)`."""

    def __init__(self, task: Task[P, R], options: EnqueueOptions,
                 connection: psycopg.Connection[Any] | psycopg.AsyncConnection[Any] | None) -> None:
        self.task = task
        self._options = options
        self._connection = connection

    def options(self, *, queue: str | None = None, priority: int | None = None,
                run_at: datetime | None = None, delay: timedelta | float | None = None,
                idempotency_key: str | None = None, tags: Sequence[str] | None = None,
                metadata: Mapping[str, Any] | None = None, deadline: float | None = None,
                connection: psycopg.Connection[Any] | psycopg.AsyncConnection[Any] | None = None,
                ) -> TaskCall[P, R]:
        """Enqueue options for the next call.

        `connection`: enqueue inside that connection's current transaction, so that the run
        exists only if the application's transaction commits. `deadline`: seconds from now the
        run may take over all its attempts (instead of the task's `deadline`).
        """
        changes = {key: value for key, value in {
            "queue": queue, "priority": priority, "run_at": run_at, "delay": delay,
            "idempotency_key": idempotency_key, "tags": tags, "metadata": metadata, "deadline": deadline,
        }.items() if value is not None}
        return TaskCall(self.task, replace(self._options, **cast(dict[str, Any], changes)),
                        connection or self._connection)

    def _op(self, inputs: Sequence[str], keys: Sequence[str] | None = None,
            progress: Callable[[int], None] | None = None) -> Op[list[tuple[int, bool]]]:
        settings = self.task.settings
        s2s = timedelta(seconds=settings.schedule_to_start) if settings.schedule_to_start else None
        return enqueue_op(settings.name, inputs, self._options, default_queue=settings.queue,
                          default_priority=settings.priority, schedule_to_start=s2s,
                          deadline=settings.deadline, idempotency_keys=keys, progress=progress,
                          flow=self.task.flow_columns(inputs))

    def _sync_connection(self) -> psycopg.Connection[Any] | None:
        if isinstance(self._connection, psycopg.AsyncConnection):
            raise ConfigurationError("an async connection was given: use enqueue_async()")
        return self._connection

    def _async_connection(self) -> psycopg.AsyncConnection[Any] | None:
        if isinstance(self._connection, psycopg.Connection):
            raise ConfigurationError("a sync connection was given: use enqueue()")
        return self._connection

    def enqueue(self, *args: P.args, **kwargs: P.kwargs) -> RunHandle[R]:
        """Put one run on the queue; the arguments are those of the task function."""
        text = self.task.codec.encode_call(args, kwargs)
        [(run_id, created)] = self.task.db.execute(self._op([text]), self._sync_connection())
        return RunHandle(self.task.db, run_id, created, self.task.codec.decode_output)

    async def enqueue_async(self, *args: P.args, **kwargs: P.kwargs) -> AsyncRunHandle[R]:
        text = self.task.codec.encode_call(args, kwargs)
        [(run_id, created)] = await self.task.db.execute_async(self._op([text]), self._async_connection())
        return AsyncRunHandle(self.task.db, run_id, created, self.task.codec.decode_output)

    def encode_many(self, items: Iterable[Any]) -> list[str]:
        return [self.task.codec.encode_item(item, f" (item {i})") for i, item in enumerate(items)]

    def enqueue_many(self, items: Iterable[Any], *, idempotency_keys: Sequence[str] | None = None,
                     progress: Callable[[int], None] | None = None) -> list[RunHandle[R]]:
        """Enqueue one run per item in one transaction (a few statements, never a loop of INSERTs).

        Each item is an instance of the task's input model, or a mapping of its arguments.
        All items are validated before anything is written.
        """
        texts = self.encode_many(items)
        op = self._op(texts, idempotency_keys, progress)
        found = self.task.db.execute(op, self._sync_connection(), transaction=True)
        decode = self.task.codec.decode_output
        return [RunHandle(self.task.db, run_id, created, decode) for run_id, created in found]

    async def enqueue_many_async(self, items: Iterable[Any], *,
                                 idempotency_keys: Sequence[str] | None = None,
                                 progress: Callable[[int], None] | None = None) -> list[AsyncRunHandle[R]]:
        texts = self.encode_many(items)
        op = self._op(texts, idempotency_keys, progress)
        found = await self.task.db.execute_async(op, self._async_connection(), transaction=True)
        decode = self.task.codec.decode_output
        return [AsyncRunHandle(self.task.db, run_id, created, decode) for run_id, created in found]


class Task(TaskCall[P, R]):
    """A declared task. Call it like the function; enqueue it to run on a worker."""

    def __init__(self, db: Database, fn: Callable[P, R] | Callable[P, Awaitable[R]],
                 settings: TaskSettings, codec: InputCodec | None = None) -> None:
        self.db = db
        self.fn = fn
        self.settings = settings
        self.is_async = inspect.iscoroutinefunction(fn)
        self.codec = codec or (BatchCodec if settings.batch else InputCodec)(settings.name, fn)
        super().__init__(self, EnqueueOptions(), None)
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn

    @property
    def name(self) -> str:
        return self.settings.name

    def flow_columns(self, inputs: Sequence[str]) -> tuple[list[str] | None, list[str] | None]:
        """Each input's concurrency key and rate cost (None: the task has no such rule)."""
        return flow_columns(self.name, self.settings.concurrency, self.settings.rate_limits, inputs)

    def __repr__(self) -> str:
        return f"<Task {self.name} queue={self.settings.queue}>"

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R | Awaitable[R]:
        """Call the function directly, in this process (handy in tests)."""
        return self.fn(*args, **kwargs)
