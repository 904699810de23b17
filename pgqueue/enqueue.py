"""Putting runs on the queue: the options of an enqueue, and the one operation that writes runs.

Every way to enqueue (a task, a name, a child spawned by a run, a workflow's node, a cron tick)
goes through `enqueue_op`: one statement for a single run, bulks in chunks of `BULK_CHUNK`
through `pgqueue.enqueue_many` (validated and written by the database functions of
`sql/functions`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from psycopg.types.json import Jsonb

from . import tracing
from .codec import check_name
from .errors import ConfigurationError
from .ops import Op, statement


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
    #: seconds from now the run may take over all its attempts (None: the task's `deadline`)
    deadline: float | None = None

    def __post_init__(self) -> None:
        if self.deadline is not None and self.deadline <= 0:
            raise ConfigurationError("deadline must be a positive number of seconds")
        if self.run_at is not None and self.run_at.tzinfo is None:
            raise ConfigurationError("run_at must be timezone-aware, e.g. datetime.now(timezone.utc)")
        if isinstance(self.delay, (int, float)) and self.delay < 0:
            raise ConfigurationError("delay must be >= 0 seconds")


BULK_CHUNK = 5000  # inputs per statement of a bulk enqueue


def enqueue_op(task: str, inputs: Sequence[str], options: EnqueueOptions, *,
               default_queue: str | None = None, default_priority: int | None = None,
               schedule_to_start: timedelta | None = None,
               deadline: float | None = None,
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
    check_name("task", task)  # the database's rule too (pgqueue.check_name), without a round trip
    keys = idempotency_keys
    if keys is not None and len(keys) != len(inputs):
        raise ConfigurationError(f"{len(keys)} idempotency keys for {len(inputs)} inputs: give one per input")
    if keys is None and options.idempotency_key is not None:
        keys = [options.idempotency_key] * len(inputs)
    delay = options.delay
    queue = options.queue or default_queue
    if queue is not None:
        check_name("queue", queue)
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
        # None: the database applies the task's registered deadline, if any
        "deadline": _seconds(options.deadline if options.deadline is not None else deadline),
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
        rows = yield statement("runs.enqueue_one", {
            **params, "input": inputs[0], "key": keys[0] if keys is not None else None,
            "concurrency_key": flow_keys[0] if flow_keys else None, "rate_cost": costs[0] if costs else None})
        return [(rows[0][0], rows[0][1])]
    found: list[tuple[int, bool]] = []
    for start in range(0, len(inputs), BULK_CHUNK):
        chunk = slice(start, start + BULK_CHUNK)
        rows = yield statement("runs.enqueue_many", {
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


def _seconds(value: float | None) -> timedelta | None:
    return None if value is None else timedelta(seconds=value)


def to_json_text(value: Mapping[str, Any]) -> str:
    return json.dumps(value, separators=(",", ":"))
