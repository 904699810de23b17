"""What an application declares in code: tasks, rate limits and cron schedules.

The registry holds the declarations and writes them to the database when a worker starts
(`register_op`): the tasks' defaults and flow-control rules (which plain-SQL enqueues and the
claim rely on), the declared limits, and the schedules. Rows changed at runtime (CLI, SQL,
dashboard) are never overwritten by code.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, overload

from . import placement
from .codec import InputCodec
from .control import Batch, Debounce, Singleton, Throttle, control_spec, register_control_op
from .cron import Schedule, sync_op
from .errors import TaskDefinitionError, UnknownTask
from .flow import Concurrency, RateLimit, RateLimitDefinition, registration, sync_limits_op
from .messages import CancelOn, cancel_rules, check_match_fields, sync_cancel_on_op
from .ops import Op, statement
from .retention import RetentionSpec, sync_task_op, task_retention
from .retry import Retry
from .sessions import register_op as register_session_op
from .task import Task, TaskSettings

if TYPE_CHECKING:
    from .database import Database

P = ParamSpec("P")
R = TypeVar("R")


class TaskDecorator:
    """What `@app.task(...)` returns: typed so that `Task[P, R]` keeps the function's signature."""

    def __init__(self, registry: TaskRegistry, options: dict[str, Any]) -> None:
        self.registry = registry
        self.options = options

    @overload
    def __call__(self, fn: Callable[P, Coroutine[Any, Any, R]]) -> Task[P, R]: ...
    @overload
    def __call__(self, fn: Callable[P, R]) -> Task[P, R]: ...

    def __call__(self, fn: Callable[P, Any]) -> Task[P, Any]:
        return self.registry.register(fn, **self.options)


class TaskRegistry:
    """The tasks, rate limits and schedules of one application; tasks enqueue through `db`."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.tasks: dict[str, Task[Any, Any]] = {}
        self.schedules: dict[str, Schedule] = {}
        self.rate_limits: dict[str, RateLimitDefinition] = {}
        #: keyed sessions (pgqueue.session_task): session name -> the input field of its key
        self.sessions: dict[str, str] = {}

    @overload
    def task(self, fn: Callable[P, Coroutine[Any, Any, R]], /) -> Task[P, R]: ...
    @overload
    def task(self, fn: Callable[P, R], /) -> Task[P, R]: ...
    @overload
    def task(self, *, name: str | None = None, queue: str = "default", priority: int = 0,
             retry: Retry | None = None, timeout: float | None = None,
             schedule_to_start: float | None = None, on_event: str | Sequence[str] = (),
             concurrency: Concurrency | None = None,
             rate_limits: Sequence[RateLimit] | RateLimit = (), max_retry_later: int = 100,
             deadline: float | None = None, heartbeat_timeout: float | None = None,
             retention: RetentionSpec | None = None, required_labels: Mapping[str, str] | None = None,
             preferred_labels: Mapping[str, str] | None = None, prefer_wait: float = 2.0, slots: int = 1,
             sticky: bool = False, pin_version: bool = False, debounce: Debounce | None = None,
             singleton: Singleton | None = None, throttle: Throttle | None = None,
             batch: Batch | None = None, cancel_on: CancelOn | Sequence[CancelOn] = ()) -> TaskDecorator: ...

    def task(self, fn: Callable[..., Any] | None = None, /, **options: Any) -> Any:  # type: ignore[misc]
        """Declare a task. Use as `@app.task` or `@app.task(queue=..., retry=..., ...)`.

        name: defaults to the function's name; queue, priority (higher runs first);
        retry: a `Retry` policy (default 3 attempts, exponential backoff with jitter);
        timeout: start-to-close seconds per attempt; schedule_to_start: seconds a run may
        wait before it fails as expired; on_event: event names that start a run of this task
        with the event's payload as input; concurrency: a `Concurrency` rule (at most N running
        runs per key); rate_limits: `RateLimit` rules (units taken before a run starts);
        max_retry_later: RetryLater requests in a row before the run fails (default 100);
        deadline: seconds from creation after which the run fails as DeadlineExceeded, over
        all attempts; heartbeat_timeout: seconds without `ctx.heartbeat()` after which the
        attempt fails (and is retried per `retry`).
        retention: how long its finished runs are kept — seconds or a timedelta, or a mapping
        such as `{"succeeded": timedelta(hours=1)}` (other statuses keep the defaults).
        Placement (docs/placement.md): required_labels / preferred_labels (`{"gpu": "a100"}`),
        prefer_wait (seconds a preferred or sticky run waits for its worker), slots (worker
        slots a run takes), sticky, pin_version.
        debounce / singleton / throttle / batch: enqueue control per key (`Debounce`, `Singleton`,
        `Throttle`, `Batch`; docs/enqueue-control.md), applied by the database to every enqueue.
        cancel_on: `CancelOn(event, match=field)` rules: that event cancels the task's unfinished
        runs (and their children) whose input has the event payload's value at `field`.
        """
        if fn is not None:
            return self.register(fn)
        return TaskDecorator(self, options)

    def register(self, fn: Callable[..., Any], *, name: str | None = None, retry: Retry | None = None,
                 codec: InputCodec | None = None, **options: Any) -> Task[Any, Any]:
        if not callable(fn):
            raise TaskDefinitionError(f"@app.task decorates a function, not {fn!r}")
        # The bare function name reads well from SQL (`pgqueue.enqueue('summarize', ...)`)
        # and survives moving the function to another module; clashes are refused below.
        task_name = name or fn.__name__
        settings = TaskSettings(name=task_name, retry=retry or Retry(), **options)
        if task_name in self.tasks and self.tasks[task_name].fn is not fn:
            raise TaskDefinitionError(f"two tasks are named {task_name!r}; give one of them name=...")
        task: Task[Any, Any] = Task(self.db, fn, settings, codec)
        model = task.codec.model
        check_match_fields(task_name, cancel_rules(task_name, settings.cancel_on), model.model_fields,
                           model.model_config.get("extra") == "allow")
        self.tasks[task_name] = task
        return task

    def get_task(self, name: str) -> Task[Any, Any]:
        try:
            return self.tasks[name]
        except KeyError:
            known = ", ".join(sorted(self.tasks)) or "none"
            raise UnknownTask(f"no task named {name!r} in this app (known: {known})") from None

    def rate_limit(self, name: str, *, limit: float, per: float = 1.0, burst: float | None = None,
                   usage: str | None = None) -> None:
        """Declare a rate limit: `limit` units per `per` seconds across all workers, with bursts up
        to `burst` units (default `limit`). Tasks take units with `rate_limits=[RateLimit(name)]`.
        `usage`: a unit runs report with `ctx.report_usage` (e.g. "tokens"); the units a run was
        charged at claim (an estimate) are then reconciled with what it reports (docs/usage.md).
        Workers write it to `pgqueue.rate_limits` at start; a runtime change is never overwritten."""
        if name in self.rate_limits:
            raise TaskDefinitionError(f"two rate limits are named {name!r}")
        self.rate_limits[name] = RateLimitDefinition(name, limit, per, burst, usage)

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

    def register_op(self) -> Op[None]:
        """Write the task defaults (queue, priority, how to compute flow-control keys), the
        declared limits and the schedules to the database (run it in one transaction)."""
        limits: list[tuple[str, Concurrency]] = []
        for task in self.tasks.values():
            s = task.settings
            s2s = None if s.schedule_to_start is None else f"{s.schedule_to_start} seconds"
            deadline = None if s.deadline is None else f"{s.deadline} seconds"
            yield statement("tasks.register", (s.name, s.queue, s.priority, s2s, deadline))
            yield statement("flow.register_flow", {"task": s.name, **registration(s.concurrency, s.rate_limits)})
            yield from register_control_op(
                s.name, control_spec(s.name, s.debounce, s.singleton, s.throttle, s.batch, s.timeout))
            for event in s.on_event:
                yield statement("durable.subscribe", (event, s.name))
            yield from sync_task_op(s.name, task_retention(s.name, s.retention))
            if s.concurrency is not None:
                limits.append((s.name, s.concurrency))
            for rule in s.rate_limits:
                if rule.name not in self.rate_limits:
                    raise TaskDefinitionError(
                        f"task {s.name!r} uses rate limit {rule.name!r}, which is not declared: add "
                        f"app.rate_limit({rule.name!r}, limit=..., per=...)")
        yield from placement.register_op([task.settings for task in self.tasks.values()])
        yield from sync_cancel_on_op({name: cancel_rules(name, task.settings.cancel_on)
                                      for name, task in self.tasks.items()})
        for session, key_field in self.sessions.items():
            yield from register_session_op(session, key_field)
        yield from sync_limits_op(limits, list(self.rate_limits.values()))
        yield from sync_op(list(self.schedules.values()))
