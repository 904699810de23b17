"""Usage reported by runs (`ctx.report_usage(tokens=..., cost=...)`) and what is read of it.

A run or a step reports what an LLM call (or anything else) actually used, in units it names:
`tokens` and `cost` by convention, any other unit by keyword (`input_tokens=`, `gpu_seconds=`).
Each report is written at once (`pgqueue.report_usage`, sql/functions/usage.sql) with the run's
task, concurrency key, attempt and the step that reported it, and is added to all-time totals per
task and unit (the metrics' counters). A rate limit declared with `usage="tokens"` is reconciled:
the estimate a run's claim took from its bucket is replaced by what the attempt reports.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg.types.json import Jsonb

from .codec import check_name
from .errors import InvalidInput
from .ops import Op, statement

#: units one report may name
MAX_UNITS = 32


def usage_units(tokens: float | None, cost: float | None, units: dict[str, Any]) -> dict[str, float]:
    """The units of one report, checked: names by the name rule, amounts finite numbers >= 0."""
    named = {**({} if tokens is None else {"tokens": tokens}), **({} if cost is None else {"cost": cost}), **units}
    if not named:
        raise InvalidInput("report_usage needs at least one unit, e.g. report_usage(tokens=1200, cost=0.004)")
    if len(named) > MAX_UNITS:
        raise InvalidInput(f"report_usage names {len(named)} units; at most {MAX_UNITS} per report")
    checked: dict[str, float] = {}
    for unit, amount in named.items():
        check_name("usage unit", unit)
        if isinstance(amount, bool) or not isinstance(amount, (int, float)) or not math.isfinite(amount) \
                or amount < 0:
            raise InvalidInput(f"usage {unit!r} must be a finite number >= 0, not {amount!r}")
        checked[unit] = float(amount)
    return checked


def report_usage_op(run_id: int, attempt: int, units: dict[str, float], step_key: str | None) -> Op[None]:
    yield statement("usage.report", {"run": run_id, "attempt": attempt, "units": Jsonb(units), "step": step_key})


def set_unit_op(name: str, unit: str | None) -> Op[None]:
    yield statement("usage.set_unit", {"name": name, "unit": unit})


@dataclass(frozen=True)
class UsageSum:
    """Usage of one unit by a task (and a key, or a run, depending on the grouping)."""

    task: str
    group: str | None
    unit: str
    amount: float
    runs: int
    reports: int
    last_at: datetime


#: how `usage_op` groups: by task alone, by task and concurrency key, or by run
GROUPINGS = ("task", "key", "run")


def usage_op(*, task: str | None = None, since: datetime | None = None, by: str = "task",
             limit: int = 100) -> Op[list[UsageSum]]:
    """Usage per task and unit (and per key or run with `by`), biggest first."""
    if by not in GROUPINGS:
        raise InvalidInput(f"usage can be grouped by {', '.join(GROUPINGS)}, not {by!r}")
    rows: list[UsageSum] = yield statement("usage.summary", {"task": task, "since": since, "by": by,
                                                             "limit": limit}, row=UsageSum, custom_plan=True)
    return rows


@dataclass(frozen=True)
class RunUsage:
    """What one step (None: the run outside its steps) of a run reported, per unit."""

    step_key: str | None
    unit: str
    amount: float
    reports: int


def run_usage_op(run_id: int) -> Op[list[RunUsage]]:
    rows: list[RunUsage] = yield statement("usage.of_run", {"run": run_id}, row=RunUsage)
    return rows


def totals_op() -> Op[list[tuple[str, str, float]]]:
    """All-time usage per (task, unit), for the metrics' counters."""
    rows = yield statement("usage.totals")
    return [(task, unit, float(amount)) for task, unit, amount in rows]
