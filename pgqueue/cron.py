"""Cron schedules: rows in `pgqueue.cron_schedules`, fired by any worker, each tick exactly once.

A schedule names a task, its input, a cron expression (5 fields, or 6 with seconds first: see `check_expression`) and a
time zone. Workers look for due schedules every second: a due row is locked with SKIP LOCKED,
its due ticks are decided by the misfire policy, each fired tick is inserted in
`pgqueue.cron_ticks` (primary key: schedule and tick time) together with its run (idempotency
key `cron:<name>:<tick>`), and the row's next fire time is advanced — one transaction, on the
database clock. However many workers run and restart, a tick makes one run.

Misfires: ticks less than a minute late always fire. Ticks missed for longer (no worker ran)
follow the schedule's policy: `skip` drops them, `run_once` fires one run for the latest of them
(unless an on-time tick fires anyway), `catch_up` fires each of them (at most `catch_up_limit`).

Time zones and DST: ticks are computed in the schedule's zone. A wall-clock time that does not
exist (spring forward) fires at the first valid time after it; a wall-clock time that happens
twice (fall back) fires once, at its first occurrence.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter  # type: ignore[import-untyped]

from .codec import check_name
from .enqueue import EnqueueOptions, enqueue_op
from .errors import ConfigurationError, UnknownTask
from .ops import Op, statement

MISFIRE_POLICIES = ("skip", "run_once", "catch_up")
#: under the `skip` policy, a tick this late still fires (workers look every second)
SKIP_GRACE = timedelta(seconds=60)
#: `catch_up` without a limit fires at most this many missed ticks
MAX_CATCH_UP = 1000


def _zone(timezone: str) -> ZoneInfo:
    try:
        return ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigurationError(f"unknown time zone {timezone!r}; use an IANA name such as 'UTC' or "
                                 "'Europe/Paris'") from None


_FIELD_NAMES = {5: ("minute", "hour", "day of month", "month", "weekday"),
                6: ("second", "minute", "hour", "day of month", "month", "weekday")}


def check_expression(expression: str, timezone: str = "UTC") -> None:
    """Raise ConfigurationError unless the expression and zone are valid.

    Six fields put the seconds first (`*/10 * * * * *`: every 10 seconds), while croniter and
    some other tools put them last. A sixth field made only of numbers (`5`, `0-30/10`) reads as
    a weekday here and as seconds there: it is refused, and the message gives both spellings, so
    a croniter expression with seconds is never silently read as a weekday. The last field may be
    `*`, `?` or weekdays by name (`MON-FRI`).
    """
    _zone(timezone)
    fields = expression.split()
    if len(fields) not in (5, 6):
        raise ConfigurationError(
            f"invalid cron expression {expression!r}: it has {len(fields)} fields; use 5 (minute hour "
            "day month weekday, e.g. '0 3 * * *') or 6 with seconds first (e.g. '*/10 * * * * *')")
    six = len(fields) == 6
    if six and any(c.isdigit() for c in fields[5]) and not any(c.isalpha() for c in fields[5]):
        seconds_first = " ".join([fields[5], *fields[:5]])
        raise ConfigurationError(
            f"ambiguous cron expression {expression!r}: pgqueue reads 6 fields with the seconds first, so "
            f"its last field {fields[5]!r} would be the weekday, while croniter reads it as seconds. For "
            f"seconds {fields[5]!r} write {seconds_first!r}; for a weekday, name it (e.g. MON-FRI)")
    if not croniter.is_valid(expression, second_at_beginning=six):
        names = _FIELD_NAMES[len(fields)]
        bad = [f"{names[i]} {value!r}" for i, value in enumerate(fields)
               if croniter.is_valid(" ".join([*fields[:i], "*", *fields[i + 1:]]), second_at_beginning=six)]
        where = f"the {bad[0]} is out of range or malformed" if len(bad) == 1 else "fields are out of range"
        raise ConfigurationError(f"invalid cron expression {expression!r}: {where} (fields: {' '.join(names)})")


def ticks_after(expression: str, timezone: str, after: datetime) -> Iterator[datetime]:
    """The schedule's ticks strictly after `after`, in UTC, without fall-back duplicates."""
    zone = _zone(timezone)
    it = croniter(expression, after.astimezone(zone), second_at_beginning=len(expression.split()) == 6)
    last_wall: datetime | None = None
    while True:
        tick = it.get_next(datetime)
        wall = tick.replace(tzinfo=None, fold=0)
        if wall == last_wall:
            continue  # the second occurrence of a wall-clock time repeated by a DST fall-back
        last_wall = wall
        yield tick.astimezone(UTC)


def next_tick(expression: str, timezone: str, after: datetime) -> datetime:
    return next(ticks_after(expression, timezone, after))


def due_ticks(expression: str, timezone: str, next_fire_at: datetime, now: datetime, policy: str,
              catch_up_limit: int | None) -> tuple[list[datetime], datetime]:
    """Which ticks to fire now, and the next fire time, for a schedule due at `next_fire_at`."""
    due = [next_fire_at]
    for tick in ticks_after(expression, timezone, next_fire_at):
        if tick > now:
            following = tick
            break
        due.append(tick)
        if len(due) > MAX_CATCH_UP + 1:
            due.pop(0)
    # Ticks less than SKIP_GRACE late always fire (workers look every second, so a busy pass can
    # find several); the policy decides about ticks missed for longer, while no worker ran.
    on_time = [tick for tick in due if now - tick <= SKIP_GRACE]
    late = due[:len(due) - len(on_time)]
    if policy == "catch_up":
        limit = min(catch_up_limit or MAX_CATCH_UP, MAX_CATCH_UP)
        return late[-limit:] + on_time, following
    if policy == "run_once" and late and not on_time:
        return late[-1:], following
    return on_time, following


@dataclass(frozen=True)
class Schedule:
    """A schedule declared in code (`app.schedule(...)`) or read from the table."""

    name: str
    expression: str
    task: str
    input: dict[str, Any] = field(default_factory=dict)
    timezone: str = "UTC"
    queue: str | None = None
    priority: int | None = None
    misfire: str = "run_once"
    catch_up_limit: int | None = None

    def __post_init__(self) -> None:
        check_expression(self.expression, self.timezone)
        if self.misfire not in MISFIRE_POLICIES:
            raise ConfigurationError(f"misfire policy {self.misfire!r} is not one of {', '.join(MISFIRE_POLICIES)}")
        if not self.name:
            raise ConfigurationError("a schedule needs a name")
        check_name("schedule", self.name, ConfigurationError)
        if self.catch_up_limit is not None and self.catch_up_limit < 1:
            raise ConfigurationError(f"catch_up_limit must be at least 1 (got {self.catch_up_limit}); "
                                     f"leave it unset for the default cap of {MAX_CATCH_UP} missed ticks")


def _row(schedule: Schedule, source: str) -> dict[str, Any]:
    return {"name": schedule.name, "expression": schedule.expression, "timezone": schedule.timezone,
            "task": schedule.task, "input": json.dumps(schedule.input), "queue": schedule.queue,
            "priority": schedule.priority, "misfire": schedule.misfire, "catch_up_limit": schedule.catch_up_limit,
            "source": source}


def sync_op(schedules: list[Schedule]) -> Op[None]:
    """Write the schedules declared in code. A row edited at runtime (CLI, SQL, Python) is left
    alone; a changed expression or zone recomputes the next fire time; `enabled` is never touched."""
    for schedule in schedules:
        yield statement("cron.save", _row(schedule, "code"))


def add_op(schedule: Schedule, known_task: bool) -> Op[None]:
    """Create or replace a schedule at runtime (it is then not overwritten by code sync)."""
    if not known_task:
        rows = yield statement("cron.task_known", {"task": schedule.task})
        if not rows:
            raise UnknownTask(f"unknown task {schedule.task!r}: no worker has registered it; start a worker "
                              "that defines it (or pass --app) before scheduling it")
    yield statement("cron.save", _row(schedule, "runtime"))


def set_enabled_op(name: str, enabled: bool) -> Op[None]:
    if not (yield statement("cron.set_enabled", {"name": name, "enabled": enabled})):
        raise ConfigurationError(f"no schedule named {name!r}; see `pgqueue cron list`")


def delete_op(name: str) -> Op[None]:
    if not (yield statement("cron.delete", {"name": name})):
        raise ConfigurationError(f"no schedule named {name!r}; see `pgqueue cron list`")


def trigger_op(name: str) -> Op[int]:
    """Enqueue a run of the schedule now, outside its ticks."""
    rows = yield statement("cron.get", {"name": name}, row=dict)
    if not rows:
        raise ConfigurationError(f"no schedule named {name!r}; see `pgqueue cron list`")
    found = rows[0]
    options = EnqueueOptions(queue=found["queue"], priority=found["priority"], tags=["cron", name])
    [(run_id, _)] = yield from enqueue_op(found["task"], [json.dumps(found["input"])], options)
    return run_id


@dataclass(frozen=True)
class ScheduleInfo:
    name: str
    expression: str
    timezone: str
    task: str
    input: dict[str, Any]
    enabled: bool
    misfire_policy: str
    next_fire_at: datetime | None
    last_fire_at: datetime | None
    source: str


def list_op() -> Op[list[ScheduleInfo]]:
    rows = yield statement("cron.list", row=ScheduleInfo)
    return rows


@dataclass(frozen=True)
class Due:
    """A schedule row due to fire, locked for this pass."""

    name: str
    expression: str
    timezone: str
    task: str
    input: dict[str, Any]
    queue: str | None
    priority: int | None
    misfire_policy: str
    catch_up_limit: int | None
    next_fire_at: datetime | None
    updated_at: datetime
    now: datetime
    task_known: bool


@dataclass(frozen=True)
class Fired:
    """A tick fired (run_id), or a schedule disabled because its row is invalid (problem)."""

    schedule: str
    tick: datetime
    run_id: int | None = None
    problem: str | None = None


def fire_due_op(limit: int = 20) -> Op[list[Fired]]:
    """Fire what is due; run in one transaction."""
    fired: list[Fired] = []
    rows: list[Due] = yield statement("cron.due", {"limit": limit}, row=Due)
    for due in rows:
        name = due.name
        try:
            start = due.next_fire_at
            if start is None:
                # new, resumed, or its expression changed: its first tick is the first after it was
                # saved (not after this pass, which would skip a tick due in between)
                start = next_tick(due.expression, due.timezone, due.updated_at)
                if start > due.now:
                    yield statement("cron.advance", {"name": name, "next": start, "last": None})
                    continue
            ticks, following = due_ticks(due.expression, due.timezone, start, due.now,
                                         due.misfire_policy, due.catch_up_limit)
        except ConfigurationError as exc:  # a row written by SQL with a bad expression or zone
            yield statement("cron.disable_broken", {"name": name})
            fired.append(Fired(name, due.now, problem=str(exc)))
            continue
        if ticks and due.queue is None and not due.task_known:
            # a row written by SQL for a task no worker registered: its enqueue would be refused
            yield statement("cron.disable_broken", {"name": name})
            fired.append(Fired(name, due.now, problem=f"task {due.task!r} is not registered by any worker and "
                               "the schedule names no queue; set its queue or start a worker that declares "
                               "the task, then resume the schedule"))
            continue
        for tick in ticks:
            if not (yield statement("cron.claim_tick", {"name": name, "tick": tick})):
                continue  # already fired (a manual edit of next_fire_at, say): never twice
            key = f"cron:{name}:{tick.isoformat()}"
            [(run_id, _)] = yield from enqueue_op(
                due.task, [json.dumps(due.input)],
                EnqueueOptions(queue=due.queue, priority=due.priority, tags=["cron", name]), idempotency_keys=[key])
            yield statement("cron.tick_run", {"name": name, "tick": tick, "run": run_id})
            fired.append(Fired(name, tick, run_id))
        yield statement("cron.advance", {"name": name, "next": following, "last": ticks[-1] if ticks else None})
    return fired
