"""Writing outcomes in batches, and retrying the write until it lands (never re-running)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..database import Database
from ..ops import Op, statement
from .executor import Outcome
from .service import DB_ERRORS, Backoff

log = logging.getLogger("pgqueue.worker")

MAX_BATCH = 500


@dataclass(slots=True)  # one per outcome written: cheap to build
class Recorded:
    """What the database made of an applied outcome: the run's status and error after the write."""

    id: int
    status: str
    error_type: str | None
    error_message: str | None


class Completer:
    """Collects outcomes and records them, many per statement.

    An outcome that cannot be written (database down) stays pending and is retried; the
    worker keeps heart-beating its run meanwhile, so nobody runs it again.
    """

    def __init__(self, db: Database, worker_id: str, on_written: Callable[[], None],
                 max_interruptions: int = 10,
                 on_recorded: Callable[[list[Outcome], dict[int, Recorded]], None] | None = None) -> None:
        self.db = db
        self.worker_id = worker_id
        self.max_interruptions = max_interruptions
        self._on_written = on_written
        #: told, after each batch, which outcomes were applied and what they became
        self._on_recorded = on_recorded
        self._pending: list[Outcome] = []
        self._arrived = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()

    def add(self, outcome: Outcome) -> None:
        self._pending.append(outcome)
        self._idle.clear()
        self._arrived.set()

    def pending(self) -> list[Outcome]:
        return list(self._pending)

    def backlog(self) -> int:
        return len(self._pending)

    async def wait_idle(self) -> None:
        await self._idle.wait()

    async def serve(self) -> None:
        backoff = Backoff("recording outcomes")
        while True:
            await self._arrived.wait()
            self._arrived.clear()
            while self._pending:
                # in id order: row locks taken in one order everywhere cannot deadlock
                batch = sorted(self._pending[:MAX_BATCH], key=lambda o: o.run_id)
                try:
                    applied = await self.db.execute_async(complete_op(self.worker_id, batch, self.max_interruptions))
                except DB_ERRORS as exc:  # kept, and written again: never run again
                    await backoff.sleep_after(exc)
                    continue
                backoff.succeeded()
                _warn_rejected(batch, applied)
                del self._pending[:len(batch)]  # the same outcomes, whatever their order
                if self._on_recorded is not None:
                    self._on_recorded(batch, applied)
                self._on_written()
            self._idle.set()


def complete_op(worker_id: str, batch: list[Outcome], max_interruptions: int = 10) -> Op[dict[int, Recorded]]:
    """Record a batch of outcomes; those applied, by run id (the others lost their lease)."""
    outcomes = [{"id": o.run_id, "attempt": o.attempt, "status": o.status, "attempt_outcome": o.attempt_outcome,
                 "result": o.result, "error": o.error, "delay": o.delay, "failed": o.failed, "logs": o.logs,
                 "retry_later": o.retry_later, "retry_later_cap": o.retry_later_cap,
                 "interrupted": o.interrupted} for o in batch]
    rows: list[Recorded] = yield statement("worker.complete", {
        "worker": worker_id, "outcomes": _json(outcomes), "ids": [o.run_id for o in batch],
        "max_interruptions": max_interruptions}, row=Recorded, custom_plan=True)
    return {row.id: row for row in rows}


def _warn_rejected(batch: list[Outcome], applied: dict[int, Recorded]) -> None:
    for outcome in batch:
        if outcome.run_id not in applied:
            log.warning("run %d attempt %d: outcome %r rejected: the run was taken over or cancelled "
                        "meanwhile (this worker lost its lease)", outcome.run_id, outcome.attempt,
                        outcome.attempt_outcome)


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), default=str)
