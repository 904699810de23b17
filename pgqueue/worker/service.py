"""The one loop skeleton every background service of a worker runs on.

A service does one pass at a time (`tick`); the loop paces the passes, and when the database
is unavailable it counts the failures, backs off with jitter and logs the first failure and
then every so often, never once per try. Services: heartbeat, rescuer, expirer, cron firer, pruner
(and the completer's and listener's retries use the same `Backoff`).
"""

from __future__ import annotations

import asyncio
import logging
import random
from abc import ABC, abstractmethod
from typing import Protocol

import psycopg
from psycopg_pool import PoolTimeout

log = logging.getLogger("pgqueue.worker")

#: what a lost or restarting database raises; anything else is a bug and is logged as such
DB_ERRORS = (psycopg.OperationalError, psycopg.InterfaceError, PoolTimeout, OSError)


class Service(Protocol):
    """A loop of the worker, started with it and cancelled when it stops."""

    async def serve(self) -> None: ...


class Backoff:
    """Consecutive failures of one thing, and how long to wait before trying it again."""

    def __init__(self, what: str, max_delay: float = 10.0) -> None:
        self.what = what
        self.max_delay = max_delay
        self.failures = 0

    def succeeded(self) -> None:
        if self.failures >= 5:
            log.info("%s works again after %d failed tries", self.what, self.failures)
        self.failures = 0

    def failed(self, exc: BaseException) -> float:
        """Count and log the failure (the first, then now and then); seconds to wait, growing
        exponentially up to `max_delay`."""
        self.failures += 1
        delay = min(self.max_delay, 0.1 * 2.0 ** min(self.failures, 7)) * (0.5 + random.random() / 2)
        if self.failures in (1, 5) or self.failures % 20 == 0:
            log.warning("%s failed (%d in a row): %s; retrying in %.1fs", self.what, self.failures, exc, delay)
        return delay

    async def sleep_after(self, exc: BaseException) -> None:
        await asyncio.sleep(self.failed(exc))


class PeriodicService(ABC):
    """A pass every `interval` seconds (spread by +/- `jitter`, so workers started together do
    not fire together), supervised: a database failure backs off, any other error is logged and
    the service carries on."""

    name = "service"
    #: longest wait before trying again after a database failure (instead of the interval)
    max_retry_delay = 10.0
    #: the interval is spread by +/- this fraction
    jitter = 0.25

    @abstractmethod
    def interval(self) -> float: ...

    @abstractmethod
    async def tick(self) -> None: ...

    async def serve(self) -> None:
        backoff = Backoff(self.name, self.max_retry_delay)
        delay = self.interval()
        while True:
            await asyncio.sleep(delay * (1 + self.jitter * (2 * random.random() - 1)))
            delay = self.interval()
            try:
                await self.tick()
            except DB_ERRORS as exc:
                delay = backoff.failed(exc)
                continue
            except Exception:
                log.exception("%s: unexpected error; carrying on", self.name)
                continue
            backoff.succeeded()
