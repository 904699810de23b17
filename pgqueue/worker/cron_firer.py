"""Firing due cron ticks. Every worker does it; row locks make each tick fire once (see `cron`)."""

from __future__ import annotations

import logging

from ..cron import fire_due_op
from ..database import Database
from .service import PeriodicService

log = logging.getLogger("pgqueue.worker")


class CronFirer(PeriodicService):
    name = "cron"

    def __init__(self, db: Database, poll_interval: float) -> None:
        self.db = db
        self.poll_interval = poll_interval

    def interval(self) -> float:
        return min(1.0, self.poll_interval)

    async def tick(self) -> None:
        for fired in await self.db.execute_async(fire_due_op(), transaction=True):
            if fired.problem:
                log.error("schedule %r disabled: %s", fired.schedule, fired.problem)
            else:
                log.info("cron %s: tick %s -> run %s", fired.schedule, fired.tick.isoformat(), fired.run_id)
