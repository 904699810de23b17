"""Calling a task in a unit test with a real run context, so that `ctx.step`, `spawn`, `sleep`
and `wait_for_event` work (a plain call of the function has no run to checkpoint into).

`call(task, *args)` enqueues a run of the task, claims it (through a private queue, so that no
other queued run is taken), and executes it in this process with the worker's executor: its
input goes through JSON and the task's model as on a worker, its steps are checkpointed, and its
outcome is recorded as a worker records it (a failure is retried per the task's policy, a
suspension leaves the run sleeping or waiting). Then it returns the task's value as
`handle.result()` would, or raises the task's own exception, or `RunSuspended` when the run
went to sleep or waits (for an event, its children): send the event or move the clock, then
`drain(app)` continues it like any other run.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

from ..app import PgQueue
from ..context import RunContext
from ..errors import ConfigurationError, RunFailed, RunSuspended
from ..ops import Op, statement
from ..runs import cancel_op, get_run_op
from ..status import RunStatus
from ..task import Task
from ..worker.claimer import Claimed, claim_op
from ..worker.completer import complete_op
from ..worker.executor import Executor
from ..worker.stream_writer import StreamWriter, limits_op
from .drain import run_in_own_loop

P = ParamSpec("P")
R = TypeVar("R")

#: the queue a called run is claimed from (it is put back on its task's queue once claimed)
CALL_QUEUE = "pgqueue_testing.call"
#: seconds the called run's lease lasts: nothing heart-beats it, so long enough for a slow test
CALL_LEASE = 600.0


def _claim_called_op(worker_id: str, run_id: int, queue: str) -> Op[Claimed]:
    claimed = yield from claim_op(worker_id, [CALL_QUEUE], 1, CALL_LEASE)
    if [run.id for run in claimed] != [run_id]:
        raise ConfigurationError(
            f"run {run_id} could not start: its concurrency key is full or its rate limit has no units left "
            "(runs of the task hold them); it was cancelled. Finish those first (drain), or call with other "
            "arguments")
    yield statement("testing.set_queue", {"id": run_id, "queue": queue})
    return claimed[0]


async def call_async(app: PgQueue, task: Task[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    """Run one attempt of `task(*args, **kwargs)` here and now with a real run context (see the
    module's docstring); for async tests, and for sync tasks from async tests."""
    if app.tasks.get(task.name) is not task:
        raise ConfigurationError(f"task {task.name!r} is not a task of this app: pass the app that declares it")
    await app.db.execute_async(app.registry.register_op(), transaction=True)
    handle = await task.options(queue=CALL_QUEUE).enqueue_async(*args, **kwargs)
    worker_id = str(uuid.uuid4())
    try:
        run = await app.db.execute_async(_claim_called_op(worker_id, handle.id, task.settings.queue),
                                         transaction=True)
    except ConfigurationError:
        await app.db.execute_async(cancel_op(handle.id))  # not left behind on the private queue
        raise
    streams = StreamWriter(app.db, worker_id, *await app.db.execute_async(limits_op()))
    writing = asyncio.create_task(streams.serve())  # ctx.stream / ctx.progress, as in a worker
    ctx = RunContext(run.id, run.task, run.attempt, worker_id, app.db, _stream=streams)
    try:
        with ThreadPoolExecutor(1, thread_name_prefix="pgqueue-testing-call") as threads:
            outcome = await Executor(app, threads).execute(run, ctx)
        await streams.finish(run.id, run.attempt)
    finally:
        writing.cancel()
    if outcome is None:
        status = (await app.db.execute_async(get_run_op(run.id))).status
        raise RunSuspended(run.id, status)
    written = await app.db.execute_async(complete_op(worker_id, [outcome]))
    if outcome.status == RunStatus.SUCCEEDED:
        return task.codec.decode_output(json.loads(outcome.result or "null"))  # type: ignore[no-any-return]
    if outcome.exception is not None:
        raise outcome.exception
    recorded = written.get(run.id)
    raise RunFailed(run.id, recorded.status if recorded is not None else outcome.status, outcome.error)


def call(app: PgQueue, task: Task[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    """`call_async` for sync tests (on an event loop of its own; sync tasks run in a thread of
    their own, async ones on that loop)."""
    return run_in_own_loop(app, lambda: call_async(app, task, *args, **kwargs))
