"""Rescuing the runs of dead workers: a run whose lease expired is queued again, or dead.

Any worker may do it; `FOR UPDATE SKIP LOCKED` in the query lets several workers rescue at
once without waiting for each other, and every write is guarded by the attempt it expects, so a
rescue never overwrites a completion that won the race (see sql/queries/worker.sql).
"""

from __future__ import annotations

import logging

from ..database import Database
from ..ops import Op, statement
from ..status import RunStatus
from .service import PeriodicService

log = logging.getLogger("pgqueue.worker")


def rescue_op(max_recoveries: int) -> Op[list[tuple[int, str]]]:
    """(run id, new status) of each run rescued: queued again, or dead after too many recoveries."""
    rows = yield statement("worker.rescue", {"max_recoveries": max_recoveries}, custom_plan=True)
    return [(run_id, status) for run_id, status in rows]


class Rescuer(PeriodicService):
    name = "rescue"

    def __init__(self, db: Database, lease: float, max_recoveries: int) -> None:
        self.db = db
        self.lease = lease
        self.max_recoveries = max_recoveries

    def interval(self) -> float:
        return max(0.2, self.lease / 3)

    async def tick(self) -> None:
        for run_id, status in await self.db.execute_async(rescue_op(self.max_recoveries)):
            log.warning("run %d: its worker was lost; %s", run_id,
                        "queued again" if status == RunStatus.QUEUED else "marked dead after too many recoveries")
