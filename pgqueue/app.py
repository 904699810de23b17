"""The application object: the façade over what an application declares and the database.

`PgQueue` composes a `TaskRegistry` (tasks, rate limits, schedules declared in code) and a
`Database` (pools and operations). Everything it does by itself is one line that runs an
operation of a lower module; the lower modules never see it.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, ParamSpec, TypeVar

import psycopg

from .cron import Schedule, ScheduleInfo, add_op, delete_op, list_op, set_enabled_op, trigger_op
from .database import Database
from .durable import send_event_op
from .enqueue import EnqueueOptions, enqueue_op, to_json_text
from .errors import ConfigurationError, InvalidInput, UnknownTask
from .flow import (
    Concurrency,
    RateLimitDefinition,
    delete_concurrency_op,
    hold_op,
    set_concurrency_op,
    set_rate_limit_op,
)
from .handles import AsyncRunHandle, RunHandle
from .hooks import Hooks
from .messages import UPDATE_TIMEOUT, get_state_op, send_op, update_async, update_sync
from .migrations import migrate
from .queues import set_queue_paused_op
from .registry import TaskRegistry
from .retention import Policy, PruneCounts, policies_op, prune_op, set_op, unset_op
from .runs import cancel_op, replay_op, reschedule_op
from .session_task import SessionDecorator
from .sessions import state_op
from .task import Task
from .usage import UsageSum, set_unit_op, usage_op
from .workflow import Workflow

P = ParamSpec("P")
R = TypeVar("R")


class PgQueue:
    """Tasks and the database they run on.

        app = PgQueue()            # DSN from PGQUEUE_DSN or DATABASE_URL

        @app.task(queue="llm", retry=Retry(max_attempts=5))
        async def summarize(doc: Document) -> Summary: ...

        summarize.enqueue(Document(id=42))
    """

    def __init__(self, dsn: str | None = None, *, pool_size: int = 4, prepared_statements: bool | None = None,
                 listen_dsn: str | None = None) -> None:
        # behind PgBouncer in transaction pooling mode: prepared_statements=False and a
        # listen_dsn straight to PostgreSQL (or "off"); see docs/deployment.md
        self.db = Database(dsn, pool_size=pool_size, prepared_statements=prepared_statements,
                           listen_dsn=listen_dsn)
        self.registry = TaskRegistry(self.db)
        #: functions called around attempts and when runs finish (see pgqueue.hooks)
        self.hooks = Hooks()
        # the registry's own methods, so that their signatures (and overloads) exist once
        self.task = self.registry.task
        self.rate_limit = self.registry.rate_limit
        self.schedule = self.registry.schedule
        self.get_task = self.registry.get_task

    @property
    def dsn(self) -> str:
        return self.db.dsn

    @property
    def tasks(self) -> dict[str, Task[Any, Any]]:
        return self.registry.tasks

    @property
    def schedules(self) -> dict[str, Schedule]:
        return self.registry.schedules

    @property
    def rate_limits(self) -> dict[str, RateLimitDefinition]:
        return self.registry.rate_limits

    # -- declaring tasks (see TaskRegistry for task, rate_limit, schedule, get_task) ------

    def workflow(self, name: str, *, queue: str = "default", on_failure: Task[Any, Any] | None = None,
                 concurrency: Concurrency | None = None) -> Workflow:
        """Declare a DAG workflow; add nodes with `@wf.node(parents=[...])` (see `pgqueue.workflow`).

        on_failure: a task started with `{"workflow_run": id, "errors": {node: error}}` when a
        node fails for good; concurrency: a rule on the workflow's runs (the key comes from the
        workflow's input)."""
        return Workflow(self.registry, name, queue=queue, on_failure=on_failure, concurrency=concurrency)

    # -- the database ----------------------------------------------------------------------

    def migrate(self) -> list[str]:
        return migrate(self.dsn)

    def register_tasks(self) -> None:
        """Write the declared tasks, limits and schedules to the database (workers do it at start)."""
        self.db.execute(self.registry.register_op(), transaction=True)

    def open(self) -> None:
        """Open the sync pool now (it opens on first use otherwise), after checking the schema: a
        wrong DSN or a missing `pgqueue migrate` fails here, e.g. at an application's start."""
        self.db.pool()

    async def open_async(self) -> None:
        """Open the async pool now (see `open`), e.g. in a FastAPI lifespan; `aclose()` closes both."""
        await self.db.async_pool()

    def close(self) -> None:
        self.db.close()

    async def aclose(self) -> None:
        await self.db.aclose()

    def __enter__(self) -> PgQueue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> PgQueue:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- cron schedules at runtime (edits here are never overwritten by code) ---------------

    def cron_add(self, schedule: Schedule) -> None:
        """Create or replace a schedule at runtime; the input of a task of this app is validated
        first (a bad one would fail at every tick)."""
        if schedule.task in self.tasks:
            self.tasks[schedule.task].codec.encode_item(schedule.input, f" (schedule {schedule.name!r})")
        self.db.execute(add_op(schedule, known_task=schedule.task in self.tasks), transaction=True)

    def cron_list(self) -> list[ScheduleInfo]:
        return self.db.execute(list_op())

    def cron_pause(self, name: str) -> None:
        self.db.execute(set_enabled_op(name, False))

    def cron_resume(self, name: str) -> None:
        self.db.execute(set_enabled_op(name, True))

    def cron_delete(self, name: str) -> None:
        self.db.execute(delete_op(name))

    def cron_trigger(self, name: str) -> RunHandle[Any]:
        """Run the schedule's task now, outside its ticks."""
        return RunHandle(self.db, self.db.execute(trigger_op(name)))

    # -- flow control at runtime (never overwritten by code) --------------------------------

    def set_concurrency_limit(self, task: str, max_running: int, *, key: str = "*",
                              strategy: str | None = None) -> None:
        """Change how many runs of `task` may run at once per key: `key="*"` (the default for every
        key) or one key, e.g. a tenant on a bigger plan. Takes effect at the next claim."""
        self.db.execute(set_concurrency_op(task, max_running, key, strategy))

    def delete_concurrency_limit(self, task: str, *, key: str = "*") -> bool:
        """Remove a key's own limit (the task's default applies again); False if there was none."""
        return self.db.execute(delete_concurrency_op(task, key))

    def set_rate_limit(self, name: str, *, limit: float, per: float = 1.0, burst: float | None = None,
                       key: str = "") -> None:
        """Define or change a rate limit at runtime; with `key`, only that key's bucket."""
        self.db.execute(set_rate_limit_op(name, limit, per, burst, key))

    def hold_rate_limit(self, name: str, seconds: float, *, key: str = "") -> datetime:
        """No worker starts a run needing this limit (key) for `seconds` (a provider's Retry-After)."""
        until: datetime = self.db.execute(hold_op(name, seconds, key))
        return until

    async def hold_rate_limit_async(self, name: str, seconds: float, *, key: str = "") -> datetime:
        until: datetime = await self.db.execute_async(hold_op(name, seconds, key))
        return until

    def set_rate_limit_usage(self, name: str, unit: str | None) -> None:
        """Reconcile limit `name`'s buckets with the `unit` runs report (None: keep the estimates)."""
        self.db.execute(set_unit_op(name, unit))

    def usage(self, *, task: str | None = None, since: datetime | None = None, by: str = "task",
              limit: int = 100) -> list[UsageSum]:
        """Usage reported by runs (`ctx.report_usage`), per task and unit; `by="key"` or `"run"` splits it."""
        return self.db.execute(usage_op(task=task, since=since, by=by, limit=limit))

    # -- retention (runtime changes are never overwritten by code) --------------------------

    def set_retention(self, keep: timedelta | float, *, status: str | None = None, task: str | None = None) -> int:
        """Keep finished runs for `keep` (a timedelta or seconds): of `status` (default: every final
        status; "events" for events no run waits for), of `task` (default: every task's)."""
        seconds = keep.total_seconds() if isinstance(keep, timedelta) else float(keep)
        return self.db.execute(set_op(seconds, status, task))

    def unset_retention(self, task: str, *, status: str | None = None) -> int:
        """Remove a task's own policy (its runs follow the defaults again)."""
        return self.db.execute(unset_op(task, status))

    def retention_policies(self) -> list[Policy]:
        return self.db.execute(policies_op())

    def prune(self, *, batch_size: int = 1000, max_batches: int | None = None) -> PruneCounts:
        """Delete finished run trees past their retention now, one short transaction per batch."""
        total, batches = PruneCounts(), 0
        while max_batches is None or batches < max_batches:
            counts = self.db.execute(prune_op(batch_size))
            total, batches = total + counts, batches + 1
            if counts.runs == 0 and counts.events == 0:
                return total
        return total

    # -- runs ------------------------------------------------------------------------------

    def enqueue(self, task: str, input: Mapping[str, Any] | None = None, *,
                connection: psycopg.Connection[Any] | None = None, **options: Any) -> RunHandle[Any]:
        """Enqueue a run of a task by name, e.g. one defined in another service.

        A task of this app is validated against its model; for any other name the input
        must be a JSON object, and the queue and priority default to those the task's
        workers registered in the database. A name that neither this app declares nor any
        worker registered is refused with `UnknownTask` unless the enqueue names its queue
        (`queue="..."`), which is how to enqueue a task before its workers first start.
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
        try:
            found = self.db.execute(op, connection, transaction=True)
        except UnknownTask as exc:
            close = difflib.get_close_matches(task, list(self.tasks), n=3)
            if close:  # a typo of one of this app's tasks, most likely
                raise UnknownTask(f"{exc} (this app declares {', '.join(map(repr, close))})") from None
            raise
        return [RunHandle(self.db, run_id, created) for run_id, created in found]

    # -- keyed sessions (docs/sessions.md) ---------------------------------------------------

    def session(self, name: str, *, key: str, **options: Any) -> SessionDecorator:
        """Declare a keyed session: a task whose invocations with the same value of input field
        `key` run one at a time, in arrival order, with that key's durable state in `ctx.state`;
        different keys run in parallel. Takes the options of `@app.task` except `concurrency`."""
        return SessionDecorator(self.registry, name, key, options)

    def get_session_state(self, session: str, key: str) -> dict[str, Any]:
        """The state of `key` in `session` as of its last checkpoint ({} for a key never invoked)."""
        return self.db.execute(state_op(session, str(key)))

    async def get_session_state_async(self, session: str, key: str) -> dict[str, Any]:
        return await self.db.execute_async(state_op(session, str(key)))

    def get_run(self, run_id: int) -> RunHandle[Any]:
        """A handle on an existing run, for sync code."""
        return RunHandle(self.db, run_id)

    def get_async_run(self, run_id: int) -> AsyncRunHandle[Any]:
        """A handle on an existing run, for async code (`await handle.result()`)."""
        return AsyncRunHandle(self.db, run_id)

    def cancel(self, run_id: int) -> str:
        """Cancel a run and what it spawned: 'cancelled' if it had not started,
        'cancel_requested' if it is running."""
        for tries_left in (2, 1, 0):
            try:
                return self.db.execute(cancel_op(run_id))
            except psycopg.errors.DeadlockDetected:
                # a worker finishing a child at that moment; cancelling is safe to repeat
                if not tries_left:
                    raise
        raise AssertionError("unreachable")

    def retry(self, run_id: int) -> str:
        """Queue a failed, cancelled or dead run again with a fresh retry budget; its completed
        steps are kept, so it resumes from the step that failed."""
        return self.db.execute(replay_op(run_id, from_start=False))

    def replay(self, run_id: int, *, from_start: bool = False) -> str:
        """Like `retry`; `from_start=True` discards the completed steps first."""
        return self.db.execute(replay_op(run_id, from_start=from_start))

    def reschedule(self, run_id: int, run_at: datetime) -> str:
        """Move a queued run (one scheduled for later, say) to another time."""
        if run_at.tzinfo is None:
            raise ConfigurationError("run_at must be timezone-aware, e.g. datetime.now(timezone.utc)")
        return self.db.execute(reschedule_op(run_id, run_at))

    def pause_queue(self, queue: str) -> None:
        """Stop workers from claiming the queue's runs (they stay queued) until resumed."""
        self.db.execute(set_queue_paused_op(queue, True))

    def resume_queue(self, queue: str) -> None:
        self.db.execute(set_queue_paused_op(queue, False))

    # -- events ----------------------------------------------------------------------------

    def send_event(self, name: str, key: str = "", payload: Any = None) -> int:
        """Send an event: runs waiting for (name, key) wake up with `payload`, tasks subscribed
        to `name` start with it as input. Returns how many waiting runs were woken."""
        return self.db.execute(send_event_op(name, key, payload))

    async def send_event_async(self, name: str, key: str = "", payload: Any = None) -> int:
        return await self.db.execute_async(send_event_op(name, key, payload))

    # -- messages, updates and queries to runs (see pgqueue.messages) ---------------------------

    def send(self, run_id: int, name: str, payload: Any = None) -> int:
        """Send message `name` (payload: any JSON value) to an unfinished run, which takes it with
        `ctx.receive(name)`, in send order, once; returns the message's id. A finished run is
        refused (InvalidRunState naming its status), an unknown one is RunNotFound."""
        return self.db.execute(send_op(run_id, name, payload))

    async def send_async(self, run_id: int, name: str, payload: Any = None) -> int:
        return await self.db.execute_async(send_op(run_id, name, payload))

    def update(self, run_id: int, name: str, payload: Any = None, *, timeout: float = UPDATE_TIMEOUT) -> Any:
        """Send message `name` and wait for the run's answer (`message.reply(value)` in the run):
        returns the reply. UpdateTimedOut after `timeout` seconds (the message stays in the
        mailbox); UpdateNotAnswered if the run ends without replying."""
        return update_sync(self.db, run_id, name, payload, timeout)

    async def update_async(self, run_id: int, name: str, payload: Any = None, *,
                           timeout: float = UPDATE_TIMEOUT) -> Any:
        return await update_async(self.db, run_id, name, payload, timeout)

    def get_state(self, run_id: int) -> Any:
        """The state the run published last with `ctx.set_state` (None if none), read without
        waking the run."""
        return self.db.execute(get_state_op(run_id)).state

    async def get_state_async(self, run_id: int) -> Any:
        return (await self.db.execute_async(get_state_op(run_id))).state


def _json_object(item: object, index: int) -> Mapping[str, Any]:
    if not isinstance(item, Mapping):
        raise InvalidInput(f"input #{index} is a {type(item).__name__}, not a JSON object of the task's arguments")
    return item
