"""Heartbeats: extending the leases of the runs a worker holds, and hearing what happened to them.

The answer lists the runs still held and whether each was asked to cancel; a run missing from
it was taken away (rescued by another worker after a lost lease, or cancelled before it
started) and must be abandoned here.
"""

from __future__ import annotations

from collections.abc import Callable

from ..database import Database
from ..metrics import Metrics
from ..ops import Op, statement
from .service import PeriodicService

#: (run ids, their attempts) held by the worker
Held = tuple[list[int], list[int]]


def heartbeat_op(worker_id: str, lease: float, ids: list[int], attempts: list[int]) -> Op[dict[int, bool]]:
    """Run id -> cancel requested, for each held run whose lease was extended."""
    rows = yield statement("worker.heartbeat", {"worker": worker_id, "lease_s": lease, "ids": ids,
                                                "attempts": attempts}, custom_plan=True)
    return {run_id: bool(cancel) for run_id, cancel in rows}


class Heartbeat(PeriodicService):
    name = "heartbeat"
    jitter = 0.0  # on time: the lease counts from the last beat

    def __init__(self, db: Database, worker_id: str, lease: float, every: float, held: Callable[[], Held],
                 answered: Callable[[set[int], dict[int, bool]], None], metrics: Metrics) -> None:
        self.db = db
        self.worker_id = worker_id
        self.lease = lease
        self.every = every
        self.held = held
        self.answered = answered
        self.metrics = metrics
        # a lease must be extended before it expires: retry within a second after a failure
        self.max_retry_delay = min(1.0, every)

    def interval(self) -> float:
        return self.every

    async def tick(self) -> None:
        ids, attempts = self.held()
        answer = await self.db.execute_async(heartbeat_op(self.worker_id, self.lease, ids, attempts))
        self.metrics.inc("pgqueue_heartbeats_total")
        self.answered(set(ids), answer)
