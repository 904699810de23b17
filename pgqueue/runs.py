"""Runs as the client sees them: enqueue operations, run state, and handles to wait on."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from psycopg.types.json import Jsonb

from . import tracing
from ._ops import Op, Statement
from ._sql import query
from .errors import ConfigurationError, RunFailed, RunNotFound

if TYPE_CHECKING:
    from .app import PgQueue

R = TypeVar("R")

TERMINAL = frozenset({"succeeded", "failed", "cancelled", "dead"})
_MAX_POLL = 1.0  # seconds between status checks when no notification arrives


@dataclass(frozen=True)
class EnqueueOptions:
    """Per-enqueue settings; None means the task's default."""

    queue: str | None = None
    priority: int | None = None
    run_at: datetime | None = None
    delay: timedelta | float | None = None
    idempotency_key: str | None = None
    tags: Sequence[str] = ()
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.run_at is not None and self.run_at.tzinfo is None:
            raise ConfigurationError("run_at must be timezone-aware, e.g. datetime.now(timezone.utc)")
        if isinstance(self.delay, (int, float)) and self.delay < 0:
            raise ConfigurationError("delay must be >= 0 seconds")


@dataclass(frozen=True)
class RunInfo:
    id: int
    task: str
    queue: str
    priority: int
    status: str
    input: dict[str, Any]
    result: Any
    error: dict[str, Any] | None
    run_at: datetime
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    attempt: int
    recoveries: int
    idempotency_key: str | None
    tags: list[str]
    metadata: dict[str, Any]
    parent_id: int | None = None
    children_total: int = 0
    children_pending: int = 0

    @property
    def done(self) -> bool:
        return self.status in TERMINAL


BULK_CHUNK = 5000  # inputs per statement of a bulk enqueue


def enqueue_op(task: str, inputs: Sequence[str], options: EnqueueOptions, *,
               default_queue: str | None = None, default_priority: int | None = None,
               schedule_to_start: timedelta | None = None,
               idempotency_keys: Sequence[str] | None = None,
               progress: Callable[[int], None] | None = None,
               parent_id: int | None = None,
               flow: tuple[Sequence[str] | None, Sequence[str] | None] = (None, None),
               ) -> Op[list[tuple[int, bool]]]:
    """Insert runs of `task`, one per JSON input text; returns (id, created) in input order.

    None defaults let the database use the task's registered queue and priority; `flow` holds
    each input's concurrency key and rate cost (pgqueue.flow), else the database computes them
    from the task's registration.
    Large bulks go in chunks of BULK_CHUNK inputs (run it in a transaction to keep it atomic).
    """
    keys = idempotency_keys
    if keys is not None and len(keys) != len(inputs):
        raise ConfigurationError(f"{len(keys)} idempotency keys for {len(inputs)} inputs: give one per input")
    if keys is None and options.idempotency_key is not None:
        keys = [options.idempotency_key] * len(inputs)
    delay = options.delay
    queue = options.queue or default_queue
    params = {
        "task": task,
        "queue": queue,
        "priority": default_priority if options.priority is None else options.priority,
        "run_at": options.run_at,
        "delay": timedelta(seconds=delay) if isinstance(delay, (int, float)) else delay,
        # empty ones go as NULL (the functions store '{}'): cheaper to send than an empty array or object
        "tags": list(options.tags) or None,
        "metadata": Jsonb(dict(options.metadata)) if options.metadata else None,
        "schedule_to_start": schedule_to_start,
    }
    with tracing.enqueue_span(task, queue, len(inputs)) as span:
        params["trace_context"] = None if span.carrier is None else Jsonb(span.carrier)
        found = yield from _insert_op(params, inputs, keys, progress, parent_id, flow)
        span.enqueued(found)
    return found


def _insert_op(params: dict[str, Any], inputs: Sequence[str], keys: Sequence[str] | None,
               progress: Callable[[int], None] | None, parent_id: int | None,
               flow: tuple[Sequence[str] | None, Sequence[str] | None]) -> Op[list[tuple[int, bool]]]:
    flow_keys, costs = flow
    if len(inputs) == 1 and not progress and parent_id is None:
        rows = yield Statement(query("runs", "enqueue_one"), {
            **params, "input": inputs[0], "key": keys[0] if keys is not None else None,
            "concurrency_key": flow_keys[0] if flow_keys else None, "rate_cost": costs[0] if costs else None})
        return [(rows[0][0], rows[0][1])]
    found: list[tuple[int, bool]] = []
    for start in range(0, len(inputs), BULK_CHUNK):
        chunk = slice(start, start + BULK_CHUNK)
        rows = yield Statement(query("runs", "enqueue_many"), {
            **params,
            "inputs": list(inputs[chunk]),
            "keys": list(keys[chunk]) if keys is not None else None,
            "parent_id": parent_id,
            "concurrency_keys": list(flow_keys[chunk]) if flow_keys else None,
            "rate_costs": list(costs[chunk]) if costs else None,
        })
        found += [(row[0], row[1]) for row in rows]
        if progress:
            progress(len(found))
    return found


def get_run_op(run_id: int) -> Op[RunInfo]:
    rows = yield Statement(query("runs", "get_run"), (run_id,))
    if not rows:
        raise RunNotFound(f"no run with id {run_id} (it may have been pruned by retention)")
    return RunInfo(*rows[0])


def to_json_text(value: Mapping[str, Any]) -> str:
    return json.dumps(value, separators=(",", ":"))


class _HandleBase(Generic[R]):
    def __init__(self, app: PgQueue, run_id: int, created: bool = True,
                 decode: Any = None) -> None:
        self.app = app
        self.id = run_id
        #: False when an idempotency key matched an existing run, which this handle points to.
        self.created = created
        self._decode = decode

    def __repr__(self) -> str:
        return f"<{type(self).__name__} run {self.id}>"

    def _outcome(self, info: RunInfo) -> R:
        if info.status != "succeeded":
            raise RunFailed(info.id, info.status, info.error)
        return self._decode(info.result) if self._decode else info.result  # type: ignore[no-any-return]


def _deadline(timeout: float | None) -> float | None:
    return None if timeout is None else time.monotonic() + timeout


def _next_wait(deadline: float | None, poll: float) -> float:
    if deadline is None:
        return poll
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError("the run did not finish in time")
    return min(poll, remaining)


class RunHandle(_HandleBase[R]):
    """A run enqueued from sync code."""

    def info(self) -> RunInfo:
        return self.app.execute(get_run_op(self.id))

    def status(self) -> str:
        return self.info().status

    def result(self, timeout: float | None = None) -> R:
        """Wait for the run to finish; return its result or raise RunFailed / TimeoutError."""
        return self._outcome(self.wait(timeout))

    def wait(self, timeout: float | None = None, on_update: Callable[[RunInfo], None] | None = None) -> RunInfo:
        """Wait for the run to finish and return its final state, whatever the outcome
        (TimeoutError after `timeout` seconds). `on_update` gets every state read meanwhile,
        e.g. to show the children done.

        Waits on LISTEN for the workers' completion signals, checking the run after each
        (and at least every second, in case a signal is lost).
        """
        deadline = _deadline(timeout)
        with self.app.listen_connection() as conn:
            conn.execute(query("runs", "listen_done"))
            poll = 0.05
            while True:
                info = self.app.execute(get_run_op(self.id))
                if on_update is not None:
                    on_update(info)
                if info.done:
                    return info
                wait = _next_wait(deadline, poll)
                for _ in conn.notifies(timeout=wait, stop_after=1):
                    pass
                poll = min(_MAX_POLL, poll * 2)


class AsyncRunHandle(_HandleBase[R]):
    """A run enqueued from async code."""

    async def info(self) -> RunInfo:
        return await self.app.execute_async(get_run_op(self.id))

    async def status(self) -> str:
        return (await self.info()).status

    async def result(self, timeout: float | None = None) -> R:
        """Async twin of `RunHandle.result`."""
        return self._outcome(await self.wait(timeout))

    async def wait(self, timeout: float | None = None,
                   on_update: Callable[[RunInfo], None] | None = None) -> RunInfo:
        """Async twin of `RunHandle.wait`."""
        deadline = _deadline(timeout)
        async with await self.app.listen_connection_async() as conn:
            await conn.execute(query("runs", "listen_done"))
            poll = 0.05
            while True:
                info = await self.app.execute_async(get_run_op(self.id))
                if on_update is not None:
                    on_update(info)
                if info.done:
                    return info
                wait = _next_wait(deadline, poll)
                async for _ in conn.notifies(timeout=wait, stop_after=1):
                    pass
                poll = min(_MAX_POLL, poll * 2)
