"""Retention: how long finished runs are kept, and pruning them (sql/functions/retention.sql).

Policies live in `pgqueue.retention_policies`: one per final status for every task (task '*'),
optionally one per task, and one for events no run waits for. Code declares a task's own with
`@app.task(retention=...)` (workers write it at start); the CLI and SQL change any of them at
runtime, and such a change is never overwritten by code. Pruning deletes whole run trees in
bounded batches (`pgqueue.prune`); the worker's `Pruner`, `pgqueue prune` and SQL call it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import datetime, timedelta

from .errors import InvalidInput, TaskDefinitionError
from .ops import Op, statement

FINAL = ("succeeded", "failed", "cancelled", "dead")
#: what `set_retention` accepts: the final statuses, and 'events'
KINDS = (*FINAL, "events")
DEFAULTS = {"succeeded": 7 * 86400.0, "failed": 30 * 86400.0, "cancelled": 30 * 86400.0,
            "dead": 30 * 86400.0, "events": 7 * 86400.0}

#: what `@app.task(retention=...)` takes: an age for every final status, or an age per status
Age = float | int | timedelta
RetentionSpec = Age | Mapping[str, Age]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")


def _seconds(value: object, label: str) -> float:
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise TaskDefinitionError(f"{label} must be seconds or a timedelta, not {value!r}")
    if not math.isfinite(seconds) or seconds <= 0:
        raise TaskDefinitionError(f"{label} must be a positive age, not {value!r}")
    return seconds


def task_retention(task: str, spec: RetentionSpec | None) -> dict[str, float]:
    """A task's `retention=` as seconds per final status (empty: the defaults apply)."""
    if spec is None:
        return {}
    if isinstance(spec, Mapping):
        unknown = sorted(str(k) for k in spec if k not in FINAL)
        if unknown:
            raise TaskDefinitionError(
                f"task {task!r}: retention for unknown status {', '.join(unknown)}: use {', '.join(FINAL)}")
        return {status: _seconds(age, f"task {task!r}: retention[{status!r}]") for status, age in spec.items()}
    seconds = _seconds(spec, f"task {task!r}: retention")
    return dict.fromkeys(FINAL, seconds)


def parse_age(text: str) -> float:
    """An age typed by a user: seconds, or a number with s, m, h, d or w ("7d", "12h", "90")."""
    match = _AGE.match(text)
    seconds = float(match[1]) * _UNITS[match[2] or "s"] if match else 0.0
    if not match or seconds <= 0:
        raise InvalidInput(f"retention age {text!r} is not a positive age: use e.g. 90s, 30m, 12h, 7d or 2w")
    return seconds


def format_age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


@dataclass(frozen=True)
class Policy:
    task: str
    status: str
    seconds: float
    source: str


@dataclass(frozen=True)
class PruneCounts:
    """What one prune removed (or, for a dry run, would remove)."""

    trees: int = 0
    runs: int = 0
    attempts: int = 0
    steps: int = 0
    event_waits: int = 0
    cron_ticks: int = 0
    events: int = 0

    def __add__(self, other: PruneCounts) -> PruneCounts:
        return PruneCounts(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    def describe(self) -> str:
        return (f"{self.runs} run(s) in {self.trees} tree(s), {self.attempts} attempt(s), {self.steps} step(s), "
                f"{self.event_waits} event wait(s), {self.cron_ticks} cron tick(s), {self.events} event(s)")


@dataclass(frozen=True)
class LastPrune:
    last_called_at: datetime | None
    last_pruned_at: datetime | None
    last_trees: int
    last_runs: int
    last_events: int
    total_trees: int
    total_runs: int
    total_events: int


# -- operations ---------------------------------------------------------------------------

def sync_task_op(task: str, policy: Mapping[str, float]) -> Op[None]:
    """Write a task's policy from code; runtime rows are left alone, code rows it no longer
    declares are removed."""
    for status, seconds in policy.items():
        yield statement("retention.sync_task", {"task": task, "status": status, "seconds": seconds})
    yield statement("retention.drop_task_code", {"task": task, "statuses": list(policy)})


def set_op(seconds: float, status: str | None = None, task: str | None = None) -> Op[int]:
    rows = yield statement("retention.set", {"seconds": seconds, "status": status, "task": task})
    return int(rows[0][0])


def unset_op(task: str, status: str | None = None) -> Op[int]:
    rows = yield statement("retention.unset", {"task": task, "status": status})
    return int(rows[0][0])


def policies_op() -> Op[list[Policy]]:
    rows = yield statement("retention.policies", row=Policy)
    return rows


def prune_op(batch_size: int = 1000, dry_run: bool = False) -> Op[PruneCounts]:
    """One batch (one transaction when run in autocommit); dry_run: everything due, removing nothing."""
    rows = yield statement("retention.prune", {"batch_size": batch_size, "dry_run": dry_run}, row=PruneCounts,
                           custom_plan=True)
    return rows[0] if rows else PruneCounts()


def prune_exclusive_op(batch_size: int) -> Op[PruneCounts | None]:
    """One batch unless another pruner is at work (None: skipped)."""
    rows = yield statement("retention.prune_exclusive", {"batch_size": batch_size}, row=PruneCounts,
                           custom_plan=True)
    return rows[0] if rows else None


def last_prune_op() -> Op[LastPrune]:
    rows = yield statement("retention.last_prune", row=LastPrune)
    last: LastPrune = rows[0]
    return last
