"""Listening for `pgqueue_ready`: wakes the claim loop when runs become due on a served queue.

A signal, not data: a lost notification only costs latency, because the claim loop also polls.
The connection is a dedicated one (a pooled connection would keep listening after its return),
on the database's `listen_dsn` (straight to PostgreSQL when the DSN goes through PgBouncer).
"""

from __future__ import annotations

import asyncio
import logging

from ..config import LISTEN_DSN_VARIABLE
from ..database import READY_CHANNEL, Database
from ..errors import DatabaseUnavailable
from .service import DB_ERRORS, Backoff

log = logging.getLogger("pgqueue.worker")


class Listener:
    def __init__(self, db: Database, queues: list[str], wake: asyncio.Event) -> None:
        self.db = db
        self.queues = set(queues)
        self.wake = wake

    async def serve(self) -> None:
        backoff = Backoff("listening for notifications (polling meanwhile)")
        while True:
            try:
                async with self.db.listen_async(READY_CHANNEL) as conn:
                    if conn is None:  # listening is off: the claim loop's polling is all
                        log.info("not listening for notifications (%s=off): claims poll only",
                                 LISTEN_DSN_VARIABLE)
                        return
                    backoff.succeeded()
                    self.wake.set()  # something may have arrived while nobody listened
                    async for note in conn.notifies():
                        if note.payload in self.queues:
                            self.wake.set()
            except (*DB_ERRORS, DatabaseUnavailable) as exc:
                await backoff.sleep_after(exc)
