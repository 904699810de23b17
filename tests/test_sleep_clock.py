"""Durable sleep follows the database clock, never the worker's."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, tzinfo
from typing import Any

import psycopg
import pytest

import pgqueue.context
from conftest import running_worker, wait_for
from pgqueue import ConfigurationError
from pgqueue.context import RunContext

pytestmark = pytest.mark.timeout(120)

SKEW = timedelta(hours=-1)  # the worker's clock is an hour behind the database's


class SkewedClock(datetime):
    @classmethod
    def now(cls, tz: tzinfo | None = None) -> SkewedClock:
        real = datetime.now(tz)
        return cls.fromtimestamp((real + SKEW).timestamp(), tz)


def db_now(dsn: str) -> datetime:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT now()").fetchone()
    assert row is not None
    return row[0]


def wake_at(dsn: str, run_id: int) -> datetime | None:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT (output ->> 'wake_at')::timestamptz FROM pgqueue.steps"
                           " WHERE run_id = %s AND name = 'sleep'", (run_id,)).fetchone()
    return row[0] if row else None


async def test_sleep_until_wakes_by_the_database_clock(durable_tasks: Any, dsn: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pgqueue.context, "datetime", SkewedClock)
    target = db_now(dsn) + timedelta(seconds=2)
    handle = await durable_tasks.alarm.enqueue_async(target.isoformat())
    async with running_worker(durable_tasks.app, poll_interval=0.05):
        await wait_for(lambda: asyncio.to_thread(lambda: wake_at(dsn, handle.id) is not None),
                       what="the run to go to sleep")
        # the wake time is the target itself: a worker an hour behind would have slept an hour more
        assert wake_at(dsn, handle.id) == target
        await handle.result(timeout=30)
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT min(at) FROM effects WHERE run_id = %s AND what = 'rang'",
                           (handle.id,)).fetchone()
    assert row is not None and row[0] >= target


async def test_sleep_until_a_time_passed_on_the_database_clock_does_not_sleep(durable_tasks: Any, dsn: str) -> None:
    handle = await durable_tasks.alarm.enqueue_async((db_now(dsn) - timedelta(minutes=5)).isoformat())
    async with running_worker(durable_tasks.app, poll_interval=0.05):
        await handle.result(timeout=30)
    woke = wake_at(dsn, handle.id)
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT created_at FROM pgqueue.runs WHERE id = %s", (handle.id,)).fetchone()
    assert row is not None and woke is not None and woke >= row[0]  # now(), never in the past


async def test_sleep_until_refuses_a_naive_datetime() -> None:
    ctx = RunContext(run_id=1, task="t", attempt=1, worker_id="w")
    with pytest.raises(ConfigurationError, match="timezone-aware"):
        await ctx.sleep_until(datetime(2030, 1, 1, 12, 0))
