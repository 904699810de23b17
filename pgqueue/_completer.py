"""Writing outcomes in batches, and retrying the write until it lands (never re-running)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg

from ._executor import Outcome
from ._sql import query

log = logging.getLogger("pgqueue.worker")

MAX_BATCH = 500


class Completer:
    """Collects outcomes and records them, many per statement.

    An outcome that cannot be written (database down) stays pending and is retried; the
    worker keeps heart-beating its run meanwhile, so nobody runs it again.
    """

    def __init__(self, worker_id: str, connection: Callable[[], Any],
                 backoff: Callable[[int], Awaitable[None]], on_written: Callable[[], None]) -> None:
        self.worker_id = worker_id
        self._connection = connection
        self._backoff = backoff
        self._on_written = on_written
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

    async def run(self) -> None:
        failures = 0
        while True:
            await self._arrived.wait()
            self._arrived.clear()
            while self._pending:
                # in id order: row locks taken in one order everywhere cannot deadlock
                batch = sorted(self._pending[:MAX_BATCH], key=lambda o: o.run_id)
                try:
                    await self._write(batch)
                    failures = 0
                except (psycopg.OperationalError, psycopg.InterfaceError, OSError) as exc:
                    failures += 1
                    log.warning("could not record %d outcome(s), will retry: %s", len(batch), exc)
                    await self._backoff(failures)
                    continue
                del self._pending[:len(batch)]  # the same outcomes, whatever their order
                self._on_written()
            self._idle.set()

    async def _write(self, batch: list[Outcome]) -> None:
        params = {
            "worker": self.worker_id,
            "ids": [o.run_id for o in batch],
            "attempts": [o.attempt for o in batch],
            "statuses": [o.status for o in batch],
            "attempt_outcomes": [o.attempt_outcome for o in batch],
            "results": [o.result for o in batch],
            "errors": [None if o.error is None else _json(o.error) for o in batch],
            "delays": [o.delay for o in batch],
            "failed": [o.failed for o in batch],
            "logs": [o.logs for o in batch],
        }
        async with self._connection() as conn:
            cur = await conn.execute(query("worker", "complete"), params)
            applied = {row[0] for row in await cur.fetchall()}
        for outcome in batch:
            if outcome.run_id not in applied:
                log.warning("run %d attempt %d: outcome %r rejected: the run was taken over or cancelled "
                            "meanwhile (this worker lost its lease)", outcome.run_id, outcome.attempt,
                            outcome.attempt_outcome)


def _json(value: dict[str, Any]) -> str:
    return json.dumps(value, separators=(",", ":"), default=str)
