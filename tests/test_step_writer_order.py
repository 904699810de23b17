"""The step writer's batch locks its runs in id order, as the heartbeat does: two connections
step by step (found by tests/test_sessions.py's 1,000 invocations, which deadlocked now and then)."""

from __future__ import annotations

import asyncio
import threading
import uuid

import psycopg
import pytest

from pgqueue import PgQueue
from pgqueue.worker.claimer import claim_op
from pgqueue.worker.step_writer import _Pending, record_steps_op
from processes import wait_until

pytestmark = pytest.mark.timeout(60)


async def test_a_batch_of_checkpoints_and_a_heartbeat_cannot_deadlock(app: PgQueue, dsn: str) -> None:
    worker = str(uuid.uuid4())
    app.enqueue_many("writer.order", [{"n": 1}, {"n": 2}], queue="writer_order")
    low, high = sorted(c.id for c in app.db.execute(claim_op(worker, ["writer_order"], 2, 60)))
    loop = asyncio.get_running_loop()
    # checkpoints arrived high first, then low (the order the heartbeat does not lock in)
    batch = [_Pending(run, 1, "s#0", 0, "s", "succeeded", "1", None, 0.0, loop.create_future())
             for run in (high, low)]
    errors: list[BaseException] = []
    written: list[dict[tuple[int, str], int]] = []

    def write() -> None:
        try:
            written.append(app.db.execute(record_steps_op(worker, batch), transaction=True))
        except BaseException as exc:
            errors.append(exc)

    with psycopg.connect(dsn) as beat:  # the heartbeat's locks, in id order, one at a time
        beat.execute("SELECT 1 FROM pgqueue.runs WHERE id = %s FOR NO KEY UPDATE", (low,))
        thread = threading.Thread(target=write)
        thread.start()

        def waiting() -> bool:
            with psycopg.connect(dsn, autocommit=True) as c:
                row = c.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                "AND query LIKE '%%pgqueue.record_steps(%%'").fetchone()
                return bool(row and row[0])
        wait_until(waiting, timeout=20, what="the batch to wait for the heartbeat's lock")
        # the batch must not hold the high run meanwhile: this lock is granted at once
        beat.execute("SET lock_timeout = '5s'")
        beat.execute("SELECT 1 FROM pgqueue.runs WHERE id = %s FOR NO KEY UPDATE", (high,))
        beat.commit()
        thread.join(30)
    assert errors == [] and written == [{(low, "s#0"): 1, (high, "s#0"): 1}]
