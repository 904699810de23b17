"""Batch runs on the worker: a batch task's claimed run leads a batch (the claim set the key's
other items aside for it, sql/functions/enqueue_control.sql); the function is called once with
every item, and each item's run gets its own element of the returned list.

The other items' outcomes are written before the leader's (`control.finish_batch`, fenced by the
leader's attempt and worker); a leader that does not succeed hands them back, each due again on its
own (`control.release_batch`). A worker that dies leaves them set aside until their time runs out
(the task's timeout and a minute, or `BATCH_PARK`); then any claim takes them again.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..codec import check_stored, loads_bounded
from ..errors import InvalidInput
from ..ops import Op, statement
from ..status import RunStatus
from .claimer import Claimed

if TYPE_CHECKING:
    from ..database import Database
    from ..task import Task


class BatchCall:
    """A batch as its leader's attempt runs it: the other items' run ids, in the list's order
    after the leader's own item (those whose input could not be decoded already failed)."""

    def __init__(self, task: Task[Any, Any], run: Claimed, worker_id: str) -> None:
        self.task = task
        self.run = run
        self.worker_id = worker_id
        self.others: list[int] = []

    async def arguments(self, db: Database) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The function's arguments: the list of every item, the leader's first."""
        codec = self.task.codec
        (first,), _ = codec.decode(loads_bounded(self.run.input, f"the input of run {self.run.id}"))
        items = [first]
        rows = await db.execute_async(_items_op(self.run.id))
        bad: list[tuple[int, str]] = []
        for run_id, text in rows:
            try:
                (item,), _ = codec.decode(loads_bounded(text, f"the input of run {run_id}"))
            except InvalidInput as exc:
                bad.append((run_id, str(exc)))
                continue
            items.append(item)
            self.others.append(run_id)
        if bad:  # an input a plain-SQL producer wrote wrong fails its own run, not the batch
            await db.execute_async(self._finish_op(
                [i for i, _ in bad], [RunStatus.FAILED] * len(bad), [None] * len(bad),
                [json.dumps({"type": "InvalidInput", "message": message}) for _, message in bad]))
        return (items,), {}

    async def finish(self, db: Database, value: Any, max_payload: int | None) -> Any:
        """Write the other items' results; the leader's own (the first element) is returned."""
        if not isinstance(value, (list, tuple)) or len(value) != 1 + len(self.others):
            count = len(value) if isinstance(value, (list, tuple)) else type(value).__name__
            raise ValueError(f"batch task {self.task.name!r} returned {count} results for {1 + len(self.others)} "
                             "items: return a list with one result per item, in the items' order")
        codec = self.task.codec
        results = [check_stored(json.dumps(codec.encode_output(v), separators=(",", ":")),
                                f"the result of run {run_id}", max_payload)
                   for run_id, v in zip(self.others, value[1:], strict=True)]
        if self.others:
            await db.execute_async(self._finish_op(self.others, [RunStatus.SUCCEEDED] * len(self.others),
                                                   results, [None] * len(self.others)))
        return value[0]

    async def release(self, db: Database) -> None:
        """The leader did not succeed: its other items go back to the queue, each on its own."""
        await db.execute_async(_release_op(self.run.id))

    def _finish_op(self, ids: Sequence[int], statuses: Sequence[str], results: Sequence[str | None],
                   errors: Sequence[str | None]) -> Op[None]:
        yield statement("control.finish_batch", {
            "leader": self.run.id, "attempt": self.run.attempt, "worker": self.worker_id, "ids": list(ids),
            "statuses": [str(s) for s in statuses], "results": list(results), "errors": list(errors)})


def _items_op(leader: int) -> Op[list[tuple[int, str]]]:
    rows = yield statement("control.batch_items", {"leader": leader})
    return [(row[0], row[1]) for row in rows]


def _release_op(leader: int) -> Op[None]:
    yield statement("control.release_batch", {"leader": leader})
