"""Claiming ahead of free slots: how many runs a worker keeps in hand, and giving back the ones it
never started (as if never claimed: no attempt counted, none recorded)."""

from __future__ import annotations

import time
from typing import Any

import psycopg
import pytest

from conftest import running_worker, wait_for
from pgqueue.ops import execute_on
from pgqueue.worker.claimer import Claimed, claim_op
from pgqueue.worker.prefetch import PACE_WINDOW, ClaimAhead
from pgqueue.worker.settings import WorkerSettings
from pgqueue.worker.worker import _release_op

WORKER = "00000000-0000-0000-0000-0000000000aa"
OTHER = "00000000-0000-0000-0000-0000000000bb"


def _run(run_id: int, attempt: int = 1) -> Claimed:
    return Claimed(run_id, "t", "{}", attempt, 0, False)


def test_nothing_is_kept_in_hand_until_runs_finish_fast() -> None:
    ahead = ClaimAhead(limit=10)
    ahead.claimed_in(0.002)
    assert ahead.wanted() == 0  # no pace measured yet
    for _ in range(1000):
        ahead.finished()
    time.sleep(PACE_WINDOW * 1.1)
    # about 5,000 runs/s finishing, 2 ms per claim: 20 runs would cover two claims; capped at 10
    assert ahead.wanted() == 10
    ahead.finished()
    time.sleep(PACE_WINDOW * 1.1)
    for _ in range(6):  # the pace halves per quiet window: slow runs keep nothing in hand
        ahead.wanted()
        time.sleep(PACE_WINDOW * 1.1)
    assert ahead.wanted() == 0


def test_runs_held_too_long_are_taken_out_of_hand_and_cancellations_are_remembered() -> None:
    ahead = ClaimAhead(limit=10, max_wait=0.05)
    ahead.hold([_run(1), _run(2)])
    ahead.cancel(2)
    assert ahead.stale() == []
    time.sleep(0.06)
    ahead.hold([_run(3)])
    assert [r.id for r in ahead.stale()] == [1, 2]
    assert [r.id for r in ahead.runs()] == [3]
    ahead.hold([_run(2)])
    ahead.drop({3})
    assert ahead.take() == (_run(2), True)
    assert ahead.take() is None


def test_prefetch_setting_is_checked() -> None:
    assert WorkerSettings(concurrency=10).prefetch_limit() == 50
    assert WorkerSettings(concurrency=80).prefetch_limit() == 80
    assert WorkerSettings(concurrency=500).prefetch_limit() == 100
    assert WorkerSettings(concurrency=10, prefetch=0).prefetch_limit() == 0
    with pytest.raises(Exception, match="prefetch must be >= 0"):
        WorkerSettings(prefetch=-1)


def test_a_released_run_is_queued_again_as_if_never_claimed(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        ids = [row[0] for row in conn.execute(
            "SELECT pgqueue.enqueue('prefetch_demo', '{}', queue => 'prefetch') FROM generate_series(1, 3)")]
        claimed = execute_on(conn, claim_op(WORKER, ["prefetch"], 10, 30))
        assert sorted(r.id for r in claimed) == ids and {r.attempt for r in claimed} == {1}
        # a release by another worker, or for another attempt, changes nothing
        execute_on(conn, _release_op(OTHER, claimed))
        execute_on(conn, _release_op(WORKER, [_run(ids[0], attempt=2)]))
        assert conn.execute("SELECT count(*) FROM pgqueue.runs WHERE id = ANY(%s) AND status = 'running'",
                            (ids,)).fetchone() == (3,)

        execute_on(conn, _release_op(WORKER, claimed[:2]))
        rows = conn.execute("SELECT id, status, attempt, worker_id, started_at, attempt_started_at,"
                            " lease_expires_at, id IN (SELECT run_id FROM pgqueue.ready)"
                            " FROM pgqueue.runs WHERE id = ANY(%s) ORDER BY id", (ids,)).fetchall()
        released = {r.id for r in claimed[:2]}
        for run_id, status, attempt, worker, started, attempt_started, lease, ready in rows:
            if run_id in released:
                assert (status, attempt, worker, started, attempt_started, lease, ready) == (
                    "queued", 0, None, None, None, None, True)
            else:
                assert (status, attempt, ready) == ("running", 1, False)
        assert conn.execute("SELECT count(*) FROM pgqueue.attempts WHERE run_id = ANY(%s)",
                            (ids,)).fetchone() == (0,)
        again = execute_on(conn, claim_op(OTHER, ["prefetch"], 10, 30))
        assert sorted(r.id for r in again) == sorted(released) and {r.attempt for r in again} == {1}


async def test_runs_in_hand_are_released_at_shutdown(worker_tasks: Any, dsn: str) -> None:
    """A worker made to keep 10 runs in hand behind 2 slots busy with naps gives the 10 back when
    it stops: queued again, no attempt counted or recorded; a later worker runs each once."""
    ids = [h.id for h in worker_tasks.nap.enqueue_many([{"seconds": 0.5}] * 12)]
    async with running_worker(worker_tasks.app, concurrency=2, prefetch=10) as worker:
        worker._ahead.wanted = lambda: 10  # type: ignore[method-assign]  # as at a fast pace
        await wait_for(lambda: _count(dsn, ids, "running", 12), what="12 runs claimed")
        assert len(worker._ahead) == 10
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT status, attempt, count(*) FROM pgqueue.runs WHERE id = ANY(%s)"
                            " GROUP BY 1, 2 ORDER BY 1", (ids,)).fetchall()
        assert rows == [("queued", 0, 10), ("succeeded", 1, 2)]
    async with running_worker(worker_tasks.app, concurrency=10, burst=True):
        await wait_for(lambda: _count(dsn, ids, "succeeded", 12), what="the queue drained")
    with psycopg.connect(dsn) as conn:
        attempts = conn.execute("SELECT max(attempt), count(*) FROM pgqueue.attempts WHERE run_id = ANY(%s)",
                                (ids,)).fetchone()
    assert attempts == (1, 12)


async def test_a_drain_with_runs_in_hand_runs_each_once(worker_tasks: Any, dsn: str) -> None:
    ids = [h.id for h in worker_tasks.record.enqueue_many([{"n": i} for i in range(2000)])]
    async with running_worker(worker_tasks.app, concurrency=10, prefetch=10, burst=True) as worker:
        worker._ahead.wanted = lambda: 10  # type: ignore[method-assign]
        await wait_for(lambda: _count(dsn, ids, "succeeded", 2000), timeout=120, what="the queue drained")
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT count(*), count(DISTINCT run_id) FROM executions WHERE run_id = ANY(%s)",
                            (ids,)).fetchone() == (2000, 2000)


async def _count(dsn: str, ids: list[int], status: str, expected: int) -> bool:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*) FROM pgqueue.runs WHERE id = ANY(%s) AND status = %s",
                           (ids, status)).fetchone()
    return row is not None and row[0] == expected
