"""Flow control declared with tasks: per-key concurrency limits and rate limits.

A task's keys are computed from its input when it is enqueued and stored with the run; the
claim (`pgqueue.claim` in sql/functions/claim.sql) enforces the limits. A key or
a number of units given as a field name can also be computed by plain-SQL enqueues (workers
register it in `pgqueue.tasks`); one given as a function only by the Python client.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .codec import check_name
from .errors import InvalidInput, TaskDefinitionError
from .ops import Op, statement

STRATEGIES = ("queue", "cancel_newest", "cancel_oldest")

#: where a key or a number of units comes from: an input field's name, or a function of the input
KeySource = str | Callable[[Mapping[str, Any]], Any]


@dataclass(frozen=True)
class Concurrency:
    """At most `max_running` runs of the task run at once per key.

    key: the input field holding the key (e.g. "tenant_id"), or a function of the input
    (a dict of the task's arguments) returning it. strategy, when a key is full: "queue"
    (wait; the default), "cancel_newest" (cancel the runs that would exceed the limit) or
    "cancel_oldest" (newest wins: the oldest running or queued runs of the key are cancelled).
    """

    key: KeySource
    max_running: int = 1
    strategy: str = "queue"

    def __post_init__(self) -> None:
        if not isinstance(self.max_running, int) or self.max_running < 1:
            raise TaskDefinitionError(f"Concurrency max_running must be an integer >= 1, not {self.max_running!r}")
        if self.strategy not in STRATEGIES:
            raise TaskDefinitionError(
                f"unknown concurrency strategy {self.strategy!r}: use one of {', '.join(STRATEGIES)}")
        _check_source("Concurrency key", self.key)


@dataclass(frozen=True)
class RateLimit:
    """A run of the task takes `units` from the bucket of rate limit `name` before it starts.

    Declare the limit itself with `app.rate_limit(name, limit=..., per=...)`. units: a number,
    an input field holding it (e.g. estimated tokens) or a function of the input; key: None
    for one bucket shared by all runs, or an input field / function giving a bucket per key
    (per tenant, per user).
    """

    name: str
    units: float | KeySource = 1
    key: KeySource | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise TaskDefinitionError("RateLimit needs the name of a limit declared with app.rate_limit(...)")
        check_name("rate limit", self.name, TaskDefinitionError)
        if isinstance(self.units, (int, float)):
            if isinstance(self.units, bool) or not math.isfinite(self.units) or self.units <= 0:
                raise TaskDefinitionError(f"RateLimit {self.name!r}: units must be a positive number")
        else:
            _check_source(f"RateLimit {self.name!r} units", self.units)
        if self.key is not None:
            _check_source(f"RateLimit {self.name!r} key", self.key)


@dataclass(frozen=True)
class RateLimitDefinition:
    """`limit` units per `per` seconds, with bursts up to `burst` (default: `limit`); `usage`: the
    unit runs report (`ctx.report_usage`) that its buckets count instead of the estimate."""

    name: str
    limit: float
    per: float = 1.0
    burst: float | None = None
    usage: str | None = None

    def __post_init__(self) -> None:
        check_name("rate limit", self.name, TaskDefinitionError)
        if self.usage is not None:
            check_name(f"rate limit {self.name!r}: usage unit", self.usage, TaskDefinitionError)
        for label, value in (("limit", self.limit), ("per", self.per), ("burst", self.burst)):
            if value is not None and (not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0):
                raise TaskDefinitionError(f"rate limit {self.name!r}: {label} must be a positive number")


def _check_source(label: str, source: Any) -> None:
    if not (callable(source) or (isinstance(source, str) and source)):
        raise TaskDefinitionError(f"{label} must be an input field name or a function of the input, not {source!r}")


def _field(task: str, data: Mapping[str, Any], field: str, label: str) -> Any:
    if field not in data or data[field] is None:
        raise InvalidInput(f"task {task!r}: the input has no field {field!r} ({label})")
    return data[field]


def _pick(task: str, data: Mapping[str, Any], source: KeySource, label: str) -> Any:
    return _field(task, data, source, label) if isinstance(source, str) else source(data)


def concurrency_key(task: str, rule: Concurrency, data: Mapping[str, Any]) -> str:
    return str(_pick(task, data, rule.key, "its concurrency key"))


def rate_cost(task: str, rules: Sequence[RateLimit], data: Mapping[str, Any]) -> str:
    """The run's `rate_cost` column: the units it takes from which bucket."""
    cost = []
    for rule in rules:
        units = rule.units if isinstance(rule.units, (int, float)) else _pick(task, data, rule.units, "its units")
        try:
            amount = float(units)
        except (TypeError, ValueError):
            raise InvalidInput(
                f"task {task!r}: rate limit {rule.name!r} units must be a number, not {units!r}") from None
        if not math.isfinite(amount) or amount < 0:
            raise InvalidInput(f"task {task!r}: rate limit {rule.name!r} units must be >= 0, not {units!r}")
        key = "" if rule.key is None else str(_pick(task, data, rule.key, f"the key of rate limit {rule.name!r}"))
        cost.append({"limit": rule.name, "key": key, "units": amount})
    return json.dumps(cost, separators=(",", ":"))


def flow_columns(task: str, concurrency: Concurrency | None, rate_limits: Sequence[RateLimit],
                 inputs: Sequence[str]) -> tuple[list[str] | None, list[str] | None]:
    """Per input (JSON text): its concurrency key and rate cost, or None for a task without them."""
    if concurrency is None and not rate_limits:
        return None, None
    data = [json.loads(text) for text in inputs]
    keys = [concurrency_key(task, concurrency, d) for d in data] if concurrency else None
    costs = [rate_cost(task, rate_limits, d) for d in data] if rate_limits else None
    return keys, costs


def registration(concurrency: Concurrency | None, rate_limits: Sequence[RateLimit]) -> dict[str, Any]:
    """What plain-SQL enqueues need to compute the keys (see pgqueue.flow_keys)."""
    specs = [{
        "limit": r.name,
        "key_field": r.key if isinstance(r.key, str) else None,
        "units": r.units if isinstance(r.units, (int, float)) else None,
        "units_field": r.units if isinstance(r.units, str) else None,
        "python_only": callable(r.key) or callable(r.units),
    } for r in rate_limits]
    return {
        "concurrency_key_field": concurrency.key if concurrency and isinstance(concurrency.key, str) else None,
        "concurrency_python_only": bool(concurrency and callable(concurrency.key)),
        "rate_limits": json.dumps(specs) if specs else None,
    }


# -- operations (shared by the sync and async APIs, and the CLI) ------------------------------

def sync_limits_op(limits: Sequence[tuple[str, Concurrency]], rates: Sequence[RateLimitDefinition]) -> Op[None]:
    """Write the limits declared in code; rows changed at runtime are left alone."""
    for task, rule in limits:
        yield statement("flow.sync_concurrency", (task, rule.max_running, rule.strategy))
    for rate in rates:
        burst = rate.burst or rate.limit
        yield statement("flow.sync_rate_limit", (rate.name, burst, rate.limit / rate.per, burst))
        yield statement("flow.propagate_rate_limit", (rate.name,))
        yield statement("usage.sync_unit", {"name": rate.name, "unit": rate.usage})


def set_concurrency_op(task: str, max_running: int, key: str, strategy: str | None) -> Op[None]:
    yield statement("flow.set_concurrency", (task, max_running, key, strategy))


def delete_concurrency_op(task: str, key: str) -> Op[bool]:
    rows = yield statement("flow.delete_concurrency", (task, key))
    return bool(rows[0][0])


def set_rate_limit_op(name: str, limit: float, per: float, burst: float | None, key: str) -> Op[None]:
    yield statement("flow.set_rate_limit", (name, limit, per, burst, key))


def hold_op(name: str, seconds: float, key: str) -> Op[Any]:
    rows = yield statement("flow.hold", (name, seconds, key))
    return rows[0][0]


@dataclass(frozen=True)
class KeyUsage:
    task: str
    key: str
    running: int
    max_running: int | None
    strategy: str | None
    queued: int


@dataclass(frozen=True)
class RateUsage:
    name: str
    key: str
    available: float
    capacity: float
    per_second: float
    held_until: datetime | None
    next_start: datetime


@dataclass(frozen=True)
class LimitRow:
    task: str
    key: str
    max_running: int
    strategy: str
    source: str


def flow_status_op(limit: int = 20) -> Op[tuple[list[KeyUsage], list[RateUsage]]]:
    """The busiest concurrency keys (running / limit, queued) and every rate-limit bucket."""
    keys = yield statement("flow.concurrency_status", {"limit": limit}, row=KeyUsage)
    rates = yield statement("flow.rate_status", {"limit": limit}, row=RateUsage)
    return keys, rates


def list_limits_op() -> Op[list[LimitRow]]:
    rows = yield statement("flow.list_concurrency_limits", row=LimitRow)
    return rows
