"""Failing runs that waited longer than their schedule-to-start window (as `Expired`), and runs
past their run-level deadline (as `DeadlineExceeded`, whatever attempt they are at)."""

from __future__ import annotations

import logging

from ..database import Database
from ..ops import Op, statement
from .service import PeriodicService

log = logging.getLogger("pgqueue.worker")


def expire_op() -> Op[int]:
    """How many queued runs were failed as expired."""
    rows = yield statement("worker.expire", custom_plan=True)
    return len(rows)


def expire_deadlines_op() -> Op[int]:
    """How many runs were failed for their deadline."""
    rows = yield statement("worker.expire_deadlines", custom_plan=True)
    return len(rows)


class Expirer(PeriodicService):
    name = "expiry"

    def __init__(self, db: Database, lease: float) -> None:
        self.db = db
        self.lease = lease

    def interval(self) -> float:
        return max(0.2, self.lease / 3)

    async def tick(self) -> None:
        expired = await self.db.execute_async(expire_op())
        if expired:
            log.warning("%d run(s) expired before starting (schedule-to-start)", expired)
        late = await self.db.execute_async(expire_deadlines_op())
        if late:
            log.warning("%d run(s) failed: past their deadline (DeadlineExceeded)", late)
