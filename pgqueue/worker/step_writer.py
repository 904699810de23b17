"""Writing the step checkpoints of all runs of a worker in batches.

Each step still waits until its checkpoint is committed before the task goes on, but the
checkpoints of the runs executing at the same moment share one statement and one commit (and
its WAL flush): the worker's concurrency turns into batch size instead of into commits.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

from ..codec import check_stored
from ..database import Database
from ..ops import Op, statement

MAX_BATCH = 500


@dataclass
class _Pending:
    run_id: int
    attempt: int
    key: str
    seq: int
    name: str
    status: str
    output: str | None
    error: str | None
    duration: float
    done: asyncio.Future[int | None]


class StepWriter:
    """Queues checkpoints and writes them in batches (a `durable.CheckpointWriter`)."""

    def __init__(self, db: Database, worker_id: str, max_payload: int) -> None:
        self.db = db
        self.worker_id = worker_id
        self.max_payload = max_payload
        self._pending: list[_Pending] = []
        self._arrived = asyncio.Event()

    async def record(self, fence: dict[str, Any], key: str, seq: int, name: str, status: str,
                     output: Any, error: dict[str, Any] | None, duration: float) -> int | None:
        """Queue one checkpoint and wait until it is committed; the step's attempt count, or
        None when the run is no longer running here."""
        text = None if output is None else json.dumps(output, separators=(",", ":"), default=str)
        if text is not None:
            check_stored(text, f'the output of step "{key}"', self.max_payload)
        done: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(int(fence["run"]), int(fence["attempt"]), key, seq, name, status, text,
                                      None if error is None else json.dumps(error), duration, done))
        self._arrived.set()
        return await done

    async def serve(self) -> None:
        while True:
            await self._arrived.wait()
            self._arrived.clear()
            while self._pending:
                batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
                try:
                    written = await self.db.execute_async(record_steps_op(self.worker_id, batch))
                except Exception as exc:  # the steps fail; their runs retry per policy
                    for item in batch:
                        if not item.done.done():
                            item.done.set_exception(exc)
                    continue
                for item in batch:
                    if not item.done.done():
                        item.done.set_result(written.get((item.run_id, item.key)))


def record_steps_op(worker_id: str, batch: list[_Pending]) -> Op[dict[tuple[int, str], int]]:
    """(run, step key) -> the step's attempt count, for each checkpoint whose run this attempt
    still holds (fenced like `record_step`). The fences lock the runs in id order, as the
    heartbeat and the completer do: in arrival order, a batch holding run 9 and waiting for run 5
    deadlocked with a heartbeat holding run 5 and waiting for run 9."""
    batch = sorted(batch, key=lambda p: p.run_id)  # stable: one run's checkpoints keep their order
    rows = yield statement("durable.record_steps", {
        "worker": worker_id,
        "runs": [p.run_id for p in batch], "attempts": [p.attempt for p in batch],
        "keys": [p.key for p in batch], "seqs": [p.seq for p in batch], "names": [p.name for p in batch],
        "statuses": [p.status for p in batch], "outputs": [p.output for p in batch],
        "errors": [p.error for p in batch], "durations": [p.duration for p in batch],
    }, custom_plan=True)
    return {(run_id, key): attempts for run_id, key, attempts in rows}
