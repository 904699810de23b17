"""Durable execution inside a run: checkpointed steps, durable sleep, waiting for events.

A step runs once per run: its result is stored keyed by (run, name#n) and any later attempt of
the same run gets the stored result back instead of running it again. Steps are numbered in
call order; if a replay calls a different step at some position than the history recorded
(the code changed under a running run), it fails with NonDeterminismError.

The decisions are written once as operations (generators, see `_ops`) and driven either by the
async API (`await ctx.step(...)`) or the sync one (`ctx.step_sync(...)`) for sync tasks.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar, cast, get_type_hints

import pydantic

from ._ops import Op, Statement
from ._sql import query
from .context import RetryLater
from .errors import PgQueueError
from .retry import Retry
from .runs import EnqueueOptions, enqueue_op

if TYPE_CHECKING:
    import psycopg

    from ._stepwriter import StepWriter
    from .app import PgQueue

T = TypeVar("T")


class NonDeterminismError(PgQueueError):
    """A replay reached a different step than the run's recorded history."""


class Suspended(BaseException):
    """The run was suspended (durable sleep, waiting); the worker has nothing more to record.

    A BaseException so that a task's own `except Exception` cannot swallow it.
    """


SUSPENDED = object()  # what an operation returns when it suspended the run


def raise_if_suspended(value: T) -> T:
    if value is SUSPENDED:
        raise Suspended()
    return value


class RunTakenOver(BaseException):
    """A fenced write found the run no longer running this attempt here (rescued or cancelled)."""


@dataclass(frozen=True)
class Recorded:
    seq: int
    key: str
    status: str
    output: Any
    error: dict[str, Any] | None
    attempts: int


@dataclass(frozen=True)
class Plan:
    """Where a step call stands: its key and sequence, and what the history holds for it."""

    seq: int
    key: str
    name: str
    recorded: Recorded | None

    @property
    def done(self) -> bool:
        return self.recorded is not None and self.recorded.status == "succeeded"


def _q(name: str, params: Any = None) -> Statement:
    return Statement(query("durable", name), params)


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), default=str)


class Durable:
    """The step history of one attempt of one run, and the operations on it."""

    def __init__(self, app: PgQueue, run_id: int, attempt: int, worker_id: str,
                 writer: StepWriter | None = None, logs: Callable[[], str | None] = lambda: None) -> None:
        self.app = app
        self.fence: dict[str, Any] = {"run": run_id, "attempt": attempt, "worker": worker_id}
        self.writer = writer
        self.logs = logs
        self._history: dict[int, Recorded] | None = None
        self.db_now: datetime | None = None
        self._next_seq = 0
        self._per_name: Counter[str] = Counter()

    # -- planning (no I/O beyond loading the history once) ---------------------------------

    def plan_op(self, name: str) -> Op[Plan]:
        if self._history is None:
            if self.fence["attempt"] == 1:
                self._history = {}  # a first attempt has no history: save the round trip
            else:
                rows = yield Statement(query("durable", "load_steps"), self.fence, custom_plan=True)
                self._history = {row[0]: Recorded(*row[:6]) for row in rows}
                self.db_now = rows[0][6] if rows else None
        seq = self._next_seq
        self._next_seq += 1
        key = f"{name}#{self._per_name[name]}"
        self._per_name[name] += 1
        recorded = self._history.get(seq)
        if recorded is not None and recorded.key != key:
            raise NonDeterminismError(
                f"run {self.fence['run']}: step {seq} was recorded as {recorded.key!r} but the code now calls "
                f"{key!r}; the task's code changed under a running run. Deploy the change under a new task "
                "name (e.g. summarize_v2) so in-flight runs keep their definition, or replay the run from "
                "the start (`pgqueue runs replay ID --from-start`)")
        return Plan(seq, key, name, recorded)

    def _record(self, plan: Plan, status: str, output: Any = None, error: dict[str, Any] | None = None,
                duration: float = 0.0) -> Statement:
        return _q("record_step", {**self.fence, "key": plan.key, "seq": plan.seq, "name": plan.name,
                                  "status": status, "output": None if output is None else _json(output),
                                  "error": None if error is None else _json(error), "duration": duration})

    def record_op(self, plan: Plan, status: str, output: Any = None, error: dict[str, Any] | None = None,
                  duration: float = 0.0) -> Op[int]:
        rows = yield self._record(plan, status, output, error, duration)
        if not rows:
            raise RunTakenOver(f"run {self.fence['run']} is no longer running here")
        return int(rows[0][0])

    def _suspend(self, status: str, wake_at: datetime | None, reason: str) -> Op[None]:
        rows = yield _q("suspend", {**self.fence, "status": status, "wake_at": wake_at, "reason": reason,
                                    "logs": self.logs()})
        if not rows:
            raise RunTakenOver(f"run {self.fence['run']} is no longer running here")

    # -- durable sleep ---------------------------------------------------------------------

    def sleep_op(self, seconds: float) -> Op[object]:
        """Returns SUSPENDED when the run was suspended: the caller raises Suspended once the
        transaction has committed (raising inside it would roll the suspension back)."""
        plan = yield from self.plan_op("sleep")
        if plan.done:
            return None
        if plan.recorded is not None:  # an earlier attempt started this sleep
            wake_at = datetime.fromisoformat(plan.recorded.output["wake_at"])
            if self.db_now is not None and wake_at <= self.db_now:
                yield _q("end_sleep", {**self.fence, "key": plan.key})
                return None
        else:
            rows = yield _q("begin_sleep", {**self.fence, "key": plan.key, "seq": plan.seq, "seconds": seconds})
            if not rows:
                raise RunTakenOver(f"run {self.fence['run']} is no longer running here")
            wake_at = rows[0][0]
        yield from self._suspend("sleeping", wake_at, f"durable sleep until {wake_at.isoformat()}")
        return SUSPENDED

    # -- events ----------------------------------------------------------------------------

    def wait_op(self, name: str, key: str, timeout: float | None, default: Any) -> Op[Any]:
        """Run in one transaction: the event lock makes a concurrent send either be found here
        or find this wait registered."""
        plan = yield from self.plan_op(f"event:{name}")
        if plan.done:
            return cast(Any, plan.recorded).output
        args = {**self.fence, "key": plan.key, "seq": plan.seq, "name": name, "event_key": key}
        yield _q("event_lock", args)
        state = yield _q("wait_state", args)
        if state and state[0][1]:  # registered earlier, and its timeout has passed
            yield _q("drop_wait", args)
            yield from self.record_op(plan, "succeeded", default)
            return default
        found = yield _q("find_event", args)
        if found:
            yield _q("drop_wait", args)
            yield from self.record_op(plan, "succeeded", found[0][0])
            return found[0][0]
        timeout_at = state[0][0] if state else None
        if not state:
            rows = yield _q("register_wait", {**args, "timeout": timeout})
            timeout_at = rows[0][0]
        yield from self._suspend("waiting", timeout_at, f"waiting for event {name!r} key {key!r}")
        return SUSPENDED


    # -- child runs ------------------------------------------------------------------------

    def spawn_op(self, task: str, inputs: list[str], queue: str, priority: int) -> Op[list[int]]:
        """Enqueue children in the same transaction as the step that records them: a replay of
        the parent returns the same ids and never spawns twice."""
        plan = yield from self.plan_op(f"spawn:{task}")
        if plan.done:
            return list(cast(Recorded, plan.recorded).output)
        run = self.fence["run"]
        keys = [f"{run}/{plan.key}/{i}" for i in range(len(inputs))]
        known = self.app.tasks.get(task)
        found = yield from enqueue_op(task, inputs, EnqueueOptions(), default_queue=queue,
                                      default_priority=priority, idempotency_keys=keys, parent_id=int(run),
                                      flow=known.flow_columns(inputs) if known else (None, None))
        created = sum(1 for _, was_created in found if was_created)
        if not (yield _q("add_children", {**self.fence, "n": created})):
            raise RunTakenOver(f"run {run} is no longer running here")
        ids = [run_id for run_id, _ in found]
        yield from self.record_op(plan, "succeeded", ids)
        return ids

    def gather_op(self, ids: list[int]) -> Op[object]:
        """Outcomes of children `ids`, once every child of this run has finished; until then
        the run waits (no slot held) and the last child to finish wakes it."""
        plan = yield from self.plan_op("gather")
        if plan.done:
            return cast(Recorded, plan.recorded).output
        pending = (yield _q("pending_children", self.fence))[0][0]
        if pending > 0:
            yield from self._suspend("waiting", None, f"waiting for {pending} child run(s)")
            return SUSPENDED
        rows = yield _q("children_outcomes", {"ids": ids})
        failed = [(run_id, status, error) for run_id, status, _, error in rows if status != "succeeded"]
        if failed:
            detail = "; ".join(f"run {i} {s}: {(e or {}).get('type')}: {(e or {}).get('message')}"
                               for i, s, e in failed[:5])
            raise ChildRunFailed(f"{len(failed)} of {len(rows)} child runs did not succeed ({detail})")
        results = [result for _, _, result, _ in rows]
        yield from self.record_op(plan, "succeeded", results)
        return results


class ChildRunFailed(PgQueueError):
    """Some children gathered by a run failed, were cancelled or dead."""


def send_event_op(name: str, key: str = "", payload: Any = None) -> Op[int]:
    rows = yield _q("send_event", {"name": name, "event_key": key, "payload": _json(payload or {})})
    return int(rows[0][0])


# -- running step functions, sync and async -----------------------------------------------------

_adapters: dict[Callable[..., Any], pydantic.TypeAdapter[Any]] = {}


def _adapter(fn: Callable[..., Any]) -> pydantic.TypeAdapter[Any]:
    """Decodes a stored step output back into the type the function returns."""
    if fn not in _adapters:
        try:
            hint = get_type_hints(fn).get("return", Any)
        except Exception:
            hint = Any
        _adapters[fn] = pydantic.TypeAdapter(hint)
    return _adapters[fn]


def _error(exc: BaseException) -> dict[str, Any]:
    return {"type": type(exc).__name__, "message": str(exc)}


def _after_failure(plan: Plan, attempts: int, exc: Exception, retry: Retry | None) -> None:
    """Per-step retries requeue the run (no worker slot held while waiting), not failing it."""
    if retry is not None and retry.should_retry(attempts, exc):
        raise RetryLater(retry.delay(attempts), f"step {plan.key} failed ({type(exc).__name__}: {exc}); "
                                                f"attempt {attempts} of {retry.max_attempts}") from exc


async def _record_async(durable: Durable, plan: Plan, status: str, output: Any, error: dict[str, Any] | None,
                        duration: float, connection: psycopg.AsyncConnection[Any] | None) -> int:
    """Through the worker's batching writer, unless the step must commit on `connection`."""
    if durable.writer is None or connection is not None:
        return await durable.app.execute_async(durable.record_op(plan, status, output, error, duration), connection)
    attempts = await durable.writer.record(durable.fence, plan.key, plan.seq, plan.name, status, output, error,
                                           duration)
    if attempts is None:
        raise RunTakenOver(f"run {durable.fence['run']} is no longer running here")
    return attempts


async def run_step(durable: Durable, name: str, fn: Callable[..., Any], args: tuple[Any, ...],
                   retry: Retry | None, timeout: float | None = None,
                   connection: psycopg.AsyncConnection[Any] | None = None) -> Any:
    app = durable.app
    plan = await app.execute_async(durable.plan_op(name), connection)
    if plan.done:
        return _adapter(fn).validate_python(cast(Recorded, plan.recorded).output)
    started = time.monotonic()
    try:
        value = fn(*args)
        if inspect.isawaitable(value):
            value = await asyncio.wait_for(value, timeout)
    except Exception as exc:
        attempts = await _record_async(durable, plan, "failed", None, _error(exc), time.monotonic() - started,
                                       connection)
        _after_failure(plan, attempts, exc, retry)
        raise
    output = _adapter(fn).dump_python(value, mode="json")
    await _record_async(durable, plan, "succeeded", output, None, time.monotonic() - started, connection)
    return value


def run_step_sync(durable: Durable, name: str, fn: Callable[..., Any], args: tuple[Any, ...],
                  retry: Retry | None, connection: psycopg.Connection[Any] | None = None) -> Any:
    app = durable.app
    plan = app.execute(durable.plan_op(name), connection)
    if plan.done:
        return _adapter(fn).validate_python(cast(Recorded, plan.recorded).output)
    started = time.monotonic()
    try:
        value = fn(*args)
    except Exception as exc:
        op = durable.record_op(plan, "failed", error=_error(exc), duration=time.monotonic() - started)
        attempts = app.execute(op, connection)
        _after_failure(plan, attempts, exc, retry)
        raise
    output = _adapter(fn).dump_python(value, mode="json")
    app.execute(durable.record_op(plan, "succeeded", output, duration=time.monotonic() - started), connection)
    return value

