"""Pruning finished run trees past their retention (see `pgqueue.retention`).

Every worker runs a pruner; no leader is elected. Each batch first tries a transaction-level
advisory lock: while one worker's batch runs, the others skip their pass instead of waiting, so
at most one pruner works at a time and the fleet's pruning costs one connection. A pass is a
series of short batches (each its own transaction, so no lock is held long) while they come back
full, for at most half the interval and `batches` batches: a fleet finishing more runs than one
batch per interval still keeps up, and what is left waits for the next pass.
"""

from __future__ import annotations

import logging
import time

from ..database import Database
from ..retention import PruneCounts, prune_exclusive_op
from .service import PeriodicService

log = logging.getLogger("pgqueue.worker")


class Pruner(PeriodicService):
    name = "pruner"

    def __init__(self, db: Database, every: float, batch_size: int, batches: int) -> None:
        self.db = db
        self.every = every
        self.batch_size = batch_size
        self.batches = batches

    def interval(self) -> float:
        return self.every

    async def tick(self) -> None:
        await self.prune_pass()

    async def prune_pass(self) -> PruneCounts | None:
        """Batches while each comes back full (at most `batches`, and half the interval); None if
        another pruner was at work."""
        total: PruneCounts | None = None
        deadline = time.monotonic() + self.every / 2
        for _ in range(self.batches):
            counts = await self.db.execute_async(prune_exclusive_op(self.batch_size))
            if counts is None:
                break
            total = counts if total is None else total + counts
            if (counts.runs < self.batch_size and counts.events < self.batch_size) or time.monotonic() > deadline:
                break
        if total is not None and (total.runs or total.events):
            log.info("pruned %s", total.describe())
        return total
