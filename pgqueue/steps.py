"""Running a step's function once per run, with its result checkpointed (`ctx.step`).

The step is written once, as a generator of effects: an operation to run (plan the step), a
call of the function, a checkpoint to record. `run_step` performs them from async code and
`run_step_sync` from a sync task's thread; neither decides anything. No transaction is held
while the function runs, except with a caller's `connection` (`step_in_transaction`), where
the function's own writes and the checkpoint commit together.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import time
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast, get_type_hints

import pydantic

from . import tracing
from .database import engine_call
from .durable import Durable, Plan, Recorded
from .errors import RunTakenOver, StepRetry
from .ops import Op
from .retry import Retry
from .status import RunStatus

if TYPE_CHECKING:
    import psycopg

    from .database import Database

_adapters: dict[Callable[..., Any], pydantic.TypeAdapter[Any]] = {}

#: the key of the step whose function is running, in its task (usage it reports names the step)
current_step: contextvars.ContextVar[str | None] = contextvars.ContextVar("pgqueue_step", default=None)


def _adapter(fn: Callable[..., Any]) -> pydantic.TypeAdapter[Any]:
    """Decodes a stored step output back into the type the function returns."""
    if fn not in _adapters:
        try:
            hint = get_type_hints(fn).get("return", Any)
        except Exception:
            hint = Any
        _adapters[fn] = pydantic.TypeAdapter(hint)
    return _adapters[fn]


class _Call:
    """Effect: call the step's function now (its value, or its exception, is sent back)."""


CALL = _Call()


@dataclass(frozen=True)
class Checkpoint:
    """Effect: record the step's outcome; the step's attempt count is sent back."""

    plan: Plan
    status: str
    output: Any
    error: dict[str, Any] | None
    duration: float


Effect = Op[Any] | _Call | Checkpoint


def _step(durable: Durable, name: str, fn: Callable[..., Any], retry: Retry | None) -> Generator[Effect, Any, Any]:
    plan: Plan = yield durable.plan_op(name)
    if plan.done:
        tracing.step_replayed(plan.key)
        return _adapter(fn).validate_python(cast(Recorded, plan.recorded).output)
    started = time.monotonic()
    with tracing.step_span(name, plan.key, durable.fence["run"]):
        outer = current_step.get()
        try:
            current_step.set(plan.key)
            try:
                value = yield CALL
            finally:
                current_step.set(outer)  # not a token's reset: a generator may be closed in another context
        except Exception as exc:
            error = {"type": type(exc).__name__, "message": str(exc)}
            attempts = yield Checkpoint(plan, RunStatus.FAILED, None, error, time.monotonic() - started)
            if retry is not None and retry.should_retry(attempts, exc):
                # the run is requeued after the step's backoff: no worker slot held while waiting,
                # and the task's own attempts are not used up. A BaseException, so that the task's
                # `except Exception:` around the step cannot turn the first failure into its fallback
                raise StepRetry(retry.delay(attempts), f"step {plan.key} failed ({type(exc).__name__}: {exc}); "
                                                        f"attempt {attempts} of {retry.max_attempts}") from exc
            raise
        output = _adapter(fn).dump_python(value, mode="json")
        yield Checkpoint(plan, RunStatus.SUCCEEDED, output, None, time.monotonic() - started)
    return value


async def run_step(db: Database, durable: Durable, name: str, fn: Callable[..., Any], args: tuple[Any, ...],
                   retry: Retry | None, timeout: float | None = None,
                   connection: psycopg.AsyncConnection[Any] | None = None,
                   before_checkpoint: Callable[[], Awaitable[None]] | None = None) -> Any:
    """`before_checkpoint`: awaited once the function returned, before its checkpoint (the run
    context stores what the function streamed: a replay, which skips the step, cannot redo it)."""
    steps = _step(durable, name, fn, retry)
    try:
        effect = next(steps)
        while True:
            try:
                if isinstance(effect, _Call):
                    answer = fn(*args)
                    if inspect.isawaitable(answer):
                        answer = await asyncio.wait_for(answer, timeout)
                else:
                    with engine_call(f"step {name!r} of run {durable.fence['run']}"):
                        if before_checkpoint is not None and isinstance(effect, Checkpoint):
                            await before_checkpoint()
                        answer = await (_checkpoint(db, durable, effect, connection) if isinstance(effect, Checkpoint)
                                        else db.execute_async(effect, connection))
            except BaseException as exc:  # thrown into the step, which decides (and re-raises)
                effect = steps.throw(exc)
            else:
                effect = steps.send(answer)
    except StopIteration as done:
        return done.value


def run_step_sync(db: Database, durable: Durable, name: str, fn: Callable[..., Any], args: tuple[Any, ...],
                  retry: Retry | None, connection: psycopg.Connection[Any] | None = None,
                  before_checkpoint: Callable[[], None] | None = None) -> Any:
    steps = _step(durable, name, fn, retry)
    try:
        effect = next(steps)
        while True:
            try:
                if isinstance(effect, _Call):
                    answer = fn(*args)
                else:
                    with engine_call(f"step {name!r} of run {durable.fence['run']}"):
                        if before_checkpoint is not None and isinstance(effect, Checkpoint):
                            before_checkpoint()
                        answer = db.execute(_checkpoint_op(durable, effect) if isinstance(effect, Checkpoint)
                                            else effect, connection)
            except BaseException as exc:
                effect = steps.throw(exc)
            else:
                effect = steps.send(answer)
    except StopIteration as done:
        return done.value


async def _checkpoint(db: Database, durable: Durable, checkpoint: Checkpoint,
                      connection: psycopg.AsyncConnection[Any] | None) -> int:
    """Through the worker's batching writer, unless the step must commit on `connection`."""
    if durable.writer is None or connection is not None:
        return await db.execute_async(_checkpoint_op(durable, checkpoint), connection)
    attempts = await durable.writer.record(durable.fence, checkpoint.plan.key, checkpoint.plan.seq,
                                           checkpoint.plan.name, checkpoint.status, checkpoint.output,
                                           checkpoint.error, checkpoint.duration)
    if attempts is None:
        raise RunTakenOver(f"run {durable.fence['run']} is no longer running here")
    return attempts


def _checkpoint_op(durable: Durable, checkpoint: Checkpoint) -> Op[int]:
    return durable.record_op(checkpoint.plan, checkpoint.status, checkpoint.output, checkpoint.error,
                             checkpoint.duration)
