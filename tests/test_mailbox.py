"""Waiting for events is a mailbox per run: each wait takes the next event (name, key) this run
has not taken, in send order, exactly once; events sent before a wait are kept for it."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest

from conftest import running_worker, wait_for

pytestmark = pytest.mark.timeout(120)


def took(dsn: str, run_id: int) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*) FROM effects WHERE run_id = %s AND what LIKE 'took %%'",
                           (run_id,)).fetchone()
    return int(row[0]) if row else 0


async def waiting_after(dsn: str, ids: list[int], taken: int) -> bool:
    def check() -> bool:
        with psycopg.connect(dsn) as conn:
            rows = conn.execute("SELECT status FROM pgqueue.runs WHERE id = ANY(%s)", (ids,)).fetchall()
        return all(r[0] == "waiting" for r in rows) and all(took(dsn, i) == taken for i in ids)
    return await asyncio.to_thread(check)


async def test_each_wait_takes_the_next_event_across_a_worker_restart(durable_tasks: Any, dsn: str) -> None:
    app = durable_tasks.app
    # two runs wait on one key: each has its own mailbox, so both get every event
    runs = [await durable_tasks.mailbox.enqueue_async("k1", 4) for _ in range(2)]
    ids = [r.id for r in runs]
    assert await app.send_event_async("note", "k1", {"n": 1}) == 0  # before any wait: kept
    async with running_worker(app, poll_interval=0.05):
        await wait_for(lambda: waiting_after(dsn, ids, 1), what="both runs to take event 1 and wait again")
    # the worker is gone: two sends between two waits are two events, not the last of them
    assert await app.send_event_async("note", "k1", {"n": 2}) == 2  # answers both waits
    assert await app.send_event_async("note", "k1", {"n": 3}) == 0  # kept for the next wait
    async with running_worker(app, poll_interval=0.05):  # a new worker continues the runs
        await wait_for(lambda: waiting_after(dsn, ids, 3), what="both runs to take events 2 and 3")
        assert await app.send_event_async("note", "k1", {"n": 4}) == 2  # after the third wait
        results = [await r.result(timeout=30) for r in runs]
    assert results == [[{"n": 1}, {"n": 2}, {"n": 3}, {"n": 4}]] * 2
    assert [took(dsn, i) for i in ids] == [4, 4]


async def test_a_run_created_after_an_event_does_not_take_it(durable_tasks: Any, dsn: str) -> None:
    app = durable_tasks.app
    await app.send_event_async("note", "k2", {"n": 0})  # before the run exists: not its mail
    run = await durable_tasks.mailbox.enqueue_async("k2", 2)
    await app.send_event_async("note", "k2", {"n": 1})
    await app.send_event_async("note", "k2", {"n": 2})
    async with running_worker(app, poll_interval=0.05):
        assert await run.result(timeout=30) == [{"n": 1}, {"n": 2}]


async def test_a_replay_from_the_start_gets_the_runs_events_back(durable_tasks: Any, dsn: str) -> None:
    app = durable_tasks.app
    run = await durable_tasks.mailbox.enqueue_async("k3", 3)
    for n in (1, 2):
        await app.send_event_async("note", "k3", {"n": n})
    async with running_worker(app, poll_interval=0.05):
        await wait_for(lambda: waiting_after(dsn, [run.id], 2), what="the run to take two events and wait")
        assert await asyncio.to_thread(app.cancel, run.id) == "cancelled"
    await app.send_event_async("note", "k3", {"n": 3})  # nobody waits: kept in the run's mailbox
    assert await asyncio.to_thread(app.replay, run.id, from_start=True) == "queued"
    async with running_worker(app, poll_interval=0.05):
        assert await run.result(timeout=30) == [{"n": 1}, {"n": 2}, {"n": 3}]
