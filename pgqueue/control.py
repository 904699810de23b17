"""Enqueue control declared with tasks: debounce, singleton (unique while active), throttle, batch.

A task's rules are written to `pgqueue.tasks.control` when a worker starts (`register_op`), and
the database applies them to every enqueue, from Python, SQL or the CLI alike: debounce and
singleton in `pgqueue.enqueue_one` (sql/functions/enqueue_control.sql, under a per-key
advisory lock), throttle and the gathering of a batch in `pgqueue.claim`; a batch's handler is
called by the worker (worker/batches.py). A key is an input field's name (None: one key for
the whole task), so that a plain-SQL enqueue computes the same key as the Python client.
"""

from __future__ import annotations

import inspect
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, get_args, get_origin, get_type_hints

import pydantic

from .codec import InputCodec
from .errors import TaskDefinitionError
from .ops import Op, statement

ON_CONFLICT = ("skip", "replace")


def _check_key(label: str, key: Any) -> None:
    if key is not None and not (isinstance(key, str) and key):
        raise TaskDefinitionError(
            f"{label} key must be the name of an input field (or None for one key for the whole task), not "
            f"{key!r}: plain-SQL enqueues compute it from the input too")


def _check_seconds(label: str, value: Any, *, positive: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value < 0 or (positive and value == 0):
        raise TaskDefinitionError(f"{label} must be a {'positive' if positive else 'non-negative'} number of "
                                  f"seconds, not {value!r}")


@dataclass(frozen=True)
class Debounce:
    """Per key, the last enqueue within `window` seconds wins: the run starts `window` seconds
    after the last enqueue of its key, with that enqueue's input, and never later than
    `max_wait` seconds after the first (None: no bound). Enqueues after the run started make a
    new run. Every enqueue of the burst returns a handle of the same run."""

    key: str | None
    window: float
    max_wait: float | None = None

    def __post_init__(self) -> None:
        _check_key("Debounce", self.key)
        _check_seconds("Debounce window", self.window, positive=False)
        if self.max_wait is not None:
            _check_seconds("Debounce max_wait", self.max_wait, positive=False)
            if self.max_wait < self.window:
                raise TaskDefinitionError(
                    f"Debounce max_wait ({self.max_wait}) must be >= window ({self.window}), or None")

    def spec(self) -> dict[str, Any]:
        return {"key_field": self.key, "window_s": self.window, "max_wait_s": self.max_wait}


@dataclass(frozen=True)
class Singleton:
    """While a run of the key is queued, running or suspended, a new enqueue of the key
    either returns that run ("skip") or replaces it ("replace": a queued run is cancelled and
    the new one queued; a running one is asked to stop, and the new run starts once it has)."""

    key: str | None
    on_conflict: str = "skip"

    def __post_init__(self) -> None:
        _check_key("Singleton", self.key)
        if self.on_conflict not in ON_CONFLICT:
            raise TaskDefinitionError(
                f"unknown Singleton on_conflict {self.on_conflict!r}: use one of {', '.join(ON_CONFLICT)}")

    def spec(self) -> dict[str, Any]:
        return {"key_field": self.key, "on_conflict": self.on_conflict}


@dataclass(frozen=True)
class Throttle:
    """At most `limit` attempts start per `period` seconds per key; the others wait (they are
    moved to when they may start, not failed). Unlike rate limits, it counts starts, not units."""

    limit: int
    period: float
    key: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.limit, bool) or not isinstance(self.limit, int) or self.limit < 1:
            raise TaskDefinitionError(f"Throttle limit must be an integer >= 1, not {self.limit!r}")
        _check_seconds("Throttle period", self.period, positive=True)
        _check_key("Throttle", self.key)

    def spec(self) -> dict[str, Any]:
        return {"key_field": self.key, "limit": self.limit, "period_s": self.period}


#: seconds the other items of a running batch are set aside (then they are claimable again, should
#: the batch's worker have died) when the task has no timeout; else its timeout and a minute
BATCH_PARK = 600.0


@dataclass(frozen=True)
class Batch:
    """Collect up to `size` enqueues of a key, or what came within `wait` seconds of the first,
    and call the task's function once with the list of their inputs. The function takes one
    parameter typed `list[Model]` and returns one result per input, in order: each run's handle
    gets its own item's result. Each enqueue takes one item (a `Model` or a mapping of its fields)."""

    size: int
    wait: float
    key: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 1:
            raise TaskDefinitionError(f"Batch size must be an integer >= 1, not {self.size!r}")
        _check_seconds("Batch wait", self.wait, positive=False)
        _check_key("Batch", self.key)

    def spec(self, timeout: float | None) -> dict[str, Any]:
        park = BATCH_PARK if timeout is None else timeout + 60
        return {"key_field": self.key, "size": self.size, "wait_s": self.wait, "park_s": park}


def control_spec(task: str, debounce: Debounce | None, singleton: Singleton | None,
                 throttle: Throttle | None, batch: Batch | None = None,
                 timeout: float | None = None) -> str | None:
    """The task's `pgqueue.tasks.control` (JSON text), or None; refuses what does not fit."""
    for label, value, kind in (("debounce", debounce, Debounce), ("singleton", singleton, Singleton),
                               ("throttle", throttle, Throttle), ("batch", batch, Batch)):
        if value is not None and not isinstance(value, kind):
            raise TaskDefinitionError(f"task {task!r}: {label}= takes a pgqueue.{kind.__name__}(...), not {value!r}")
    chosen = [label for label, value in (("debounce", debounce), ("singleton", singleton), ("batch", batch))
              if value is not None]
    if len(chosen) > 1:
        raise TaskDefinitionError(
            f"task {task!r}: {' and '.join(f'{c}=' for c in chosen)} each decide what a second enqueue of a key "
            "does: choose one")
    spec: dict[str, Any] = {label: value.spec() for label, value in
                            (("debounce", debounce), ("singleton", singleton), ("throttle", throttle))
                            if value is not None}
    if batch is not None:
        spec["batch"] = batch.spec(timeout)
    return json.dumps(spec, separators=(",", ":")) if spec else None


class BatchCodec(InputCodec):
    """The codec of a batch task `fn(items: list[Model]) -> list[Result]`: a run's input is one
    item (a `Model`), its result one `Result`."""

    def __init__(self, task_name: str, fn: Callable[..., Any]) -> None:
        def refuse(why: str) -> TaskDefinitionError:
            return TaskDefinitionError(
                f"task {task_name!r}: batch= needs a function of one parameter typed list[Model], Model a "
                f"pydantic model, returning one result per item (e.g. def embed(docs: list[Doc]) -> "
                f"list[Vector]); {why}")

        params = list(inspect.signature(fn).parameters.values())
        try:
            hints = get_type_hints(fn)
        except Exception as exc:
            raise refuse(f"its type hints cannot be read ({exc})") from None
        if len(params) != 1:
            raise refuse(f"it takes {len(params)} parameters")
        annotation = hints.get(params[0].name)
        item = get_args(annotation)[0] if get_origin(annotation) is list and get_args(annotation) else None
        if not (isinstance(item, type) and issubclass(item, pydantic.BaseModel)):
            raise refuse(f"its parameter is typed {annotation!r}")
        returned = hints.get("return", Any)
        self.task_name = task_name
        self.signature = inspect.signature(lambda item: None)
        self.model_param = "item"
        self.model = item
        self.output = pydantic.TypeAdapter(get_args(returned)[0] if get_origin(returned) is list
                                           and get_args(returned) else Any)

    def encode_call(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> str:
        """`task.enqueue(item)` or `task.enqueue(**fields of the item)`: one item per run."""
        if len(args) == 1 and not kwargs:
            return self.encode_item(args[0])
        if not args:
            return self.encode_item(dict(kwargs))
        raise TaskDefinitionError(f"task {self.task_name!r} is a batch task: enqueue one item, "
                                  f"task.enqueue({self.model.__name__}(...)), or enqueue_many(items)")


def register_control_op(task: str, control: str | None) -> Op[None]:
    """Write a task's rules (`control_spec`) to `pgqueue.tasks.control`."""
    yield statement("control.register", {"task": task, "control": control})


@dataclass(frozen=True)
class TaskRow:
    """A registered task as `pgqueue tasks` lists it."""

    name: str
    queue: str
    priority: int
    control: str | None
    concurrency_key_field: str | None
    rate_limited: bool


def list_tasks_op() -> Op[list[TaskRow]]:
    rows = yield statement("control.list_tasks", row=TaskRow)
    return rows
