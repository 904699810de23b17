"""What was enqueued: the runs of a task in a test database, to assert on."""

from __future__ import annotations

from typing import Any

from ..app import PgQueue
from ..ops import Op, statement
from ..runs import RunInfo
from ..task import Task


def _enqueued_op(task: str | None, status: str | None) -> Op[list[RunInfo]]:
    rows: list[RunInfo] = yield statement("testing.enqueued", {"task": task, "status": status}, row=RunInfo)
    return rows


def _name(task: Task[Any, Any] | str | None) -> str | None:
    return task.name if isinstance(task, Task) else task


def enqueued(app: PgQueue, task: Task[Any, Any] | str | None = None, *, status: str | None = None) -> list[RunInfo]:
    """The runs of `task` (every task when None), in `status` if given, oldest first. Each has the
    stored `input` (a dict of the task's arguments, as JSON), `queue`, `tags`, `run_at`, `parent_id`..."""
    return app.db.execute(_enqueued_op(_name(task), status))


async def enqueued_async(app: PgQueue, task: Task[Any, Any] | str | None = None, *,
                         status: str | None = None) -> list[RunInfo]:
    return await app.db.execute_async(_enqueued_op(_name(task), status))


def assert_enqueued(app: PgQueue, task: Task[Any, Any] | str, /, count: int | None = None,
                    **input: Any) -> list[RunInfo]:
    """Assert that runs of `task` were enqueued whose input holds every `input` item (and, with
    `count`, that there are exactly that many); returns them. The error lists what was enqueued."""
    runs = enqueued(app, task)
    matching = [run for run in runs if all(run.input.get(key) == value for key, value in input.items())]
    if (count is None and not matching) or (count is not None and len(matching) != count):
        wanted = "a run" if count is None else f"{count} run(s)"
        found = "\n  ".join(f"run {r.id} ({r.status}): {r.input}" for r in runs) or "none"
        raise AssertionError(f"expected {wanted} of {_name(task)} with input {input}; enqueued runs of it:\n  {found}")
    return matching
