"""Fences: a write of an attempt commits only while that attempt still owns the run.

The races are driven step by step on two connections (no sleeps): a step written through
`step_in_transaction` and a rescue of its run interleaved in each order.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from pgqueue import PgQueue
from pgqueue.durable import Durable
from pgqueue.errors import RunTakenOver
from pgqueue.ops import statement
from pgqueue.steps import run_step_sync
from pgqueue.worker.step_writer import _Pending, record_steps_op

pytestmark = pytest.mark.timeout(60)

Conn = psycopg.Connection[tuple[Any, ...]]
QUEUE = "fences"


@pytest.fixture
def app(dsn: str) -> Iterator[PgQueue]:
    queue = PgQueue(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS fence_effects (run_id bigint, attempt int)")
        conn.execute("INSERT INTO pgqueue.tasks (name) VALUES ('fenced') ON CONFLICT DO NOTHING")
        conn.execute("DELETE FROM pgqueue.ready WHERE queue = %s", (QUEUE,))  # earlier tests' runs
        conn.execute("UPDATE pgqueue.runs SET status = 'cancelled', finished_at = now()"
                     " WHERE queue = %s AND status IN ('queued', 'running')", (QUEUE,))
    yield queue
    queue.close()


def claimed_run(conn: Conn, *, expired: bool) -> tuple[int, int, str]:
    """A run of its own queue claimed by a new worker id: (run, attempt, worker). With `expired`,
    its lease has already run out while the worker still executes it (a zombie to be)."""
    [(run_id,)] = conn.execute("SELECT pgqueue.enqueue('fenced', '{}', queue => %s)", (QUEUE,)).fetchall()
    worker = str(uuid.uuid4())
    rows = conn.execute("SELECT id, attempt FROM pgqueue.claim(%s, %s, 1, 30)", (worker, [QUEUE])).fetchall()
    assert rows == [(run_id, rows[0][1])], rows
    if expired:
        conn.execute("UPDATE pgqueue.runs SET lease_expires_at = now() - interval '1 second' WHERE id = %s",
                     (run_id,))
    return run_id, rows[0][1], worker


def rescue(app: PgQueue, connection: Conn | None = None) -> list[int]:
    rows = app.db.execute(_rescue_op(), connection)
    return [row[0] for row in rows]


def _rescue_op() -> Any:
    rows = yield statement("worker.rescue", {"max_recoveries": 10})
    return rows


def write_effect(conn: Conn, run_id: int, attempt: int) -> int:
    conn.execute("INSERT INTO fence_effects VALUES (%s, %s)", (run_id, attempt))
    return attempt


def step_in_transaction(app: PgQueue, conn: Conn, run_id: int, attempt: int, worker: str) -> int:
    """The body of `RunContext.step_in_transaction_sync`, on a connection the test holds, so the
    test decides when the transaction commits."""
    durable = Durable(run_id, attempt, worker)
    return int(run_step_sync(app.db, durable, "store", write_effect, (conn, run_id, attempt), None, conn))


def effects(conn: Conn, run_id: int) -> list[int]:
    return [r[0] for r in conn.execute("SELECT attempt FROM fence_effects WHERE run_id = %s", (run_id,))]


def test_a_rescue_cannot_take_the_run_while_its_step_commits(app: PgQueue, dsn: str, conn: Conn) -> None:
    run_id, attempt, worker = claimed_run(conn, expired=True)
    with psycopg.connect(dsn) as step_conn, step_conn.transaction():
        assert step_in_transaction(app, step_conn, run_id, attempt, worker) == attempt
        # the effect and the step's row are written, not committed: the fence holds the run
        # row, so the rescue (SKIP LOCKED) passes it by instead of handing it to a new attempt
        assert run_id not in rescue(app)
        assert conn.execute("SELECT status, attempt FROM pgqueue.runs WHERE id = %s",
                            (run_id,)).fetchone() == ("running", attempt)
        # committed: now the rescue takes it, and the next attempt finds the step done
    assert run_id in rescue(app)
    [(second,)] = conn.execute("SELECT attempt FROM pgqueue.claim(%s, %s, 1, 30)",
                               (str(uuid.uuid4()), [QUEUE])).fetchall()
    assert second == attempt + 1
    with psycopg.connect(dsn) as step_conn, step_conn.transaction():
        durable = Durable(run_id, second, "unused")  # replay: the recorded output comes back
        replayed = run_step_sync(app.db, durable, "store", _never_called, (step_conn,), None, step_conn)
    assert replayed == attempt
    assert effects(conn, run_id) == [attempt]


def _never_called(*_: Any) -> int:
    raise AssertionError("a step recorded by an earlier attempt ran again")


def test_a_step_fenced_after_the_rescue_rolls_back_its_effect(app: PgQueue, dsn: str, conn: Conn) -> None:
    run_id, attempt, worker = claimed_run(conn, expired=True)
    assert run_id in rescue(app)
    with psycopg.connect(dsn) as step_conn, pytest.raises(RunTakenOver), step_conn.transaction():
        step_in_transaction(app, step_conn, run_id, attempt, worker)
    assert effects(conn, run_id) == []


def test_a_step_fenced_during_the_rescue_waits_for_it_then_rolls_back(app: PgQueue, dsn: str,
                                                                      conn: Conn) -> None:
    run_id, attempt, worker = claimed_run(conn, expired=True)
    outcome: list[BaseException | int] = []
    with psycopg.connect(dsn) as rescuer:
        assert run_id in rescue(app, rescuer)  # the rescue's transaction is open: the run row is locked

        def step() -> None:
            with psycopg.connect(dsn) as step_conn:
                try:
                    with step_conn.transaction():
                        outcome.append(step_in_transaction(app, step_conn, run_id, attempt, worker))
                except BaseException as exc:
                    outcome.append(exc)

        thread = threading.Thread(target=step)
        thread.start()
        _wait_until_blocked(conn, "INSERT INTO pgqueue.steps")  # effect written, waiting in the fence
        assert outcome == []
        rescuer.commit()
        thread.join(30)
    assert len(outcome) == 1 and isinstance(outcome[0], RunTakenOver), outcome
    assert effects(conn, run_id) == []


def test_a_batch_of_checkpoints_waits_for_a_rescue_then_writes_nothing(app: PgQueue, dsn: str,
                                                                         conn: Conn) -> None:
    """The worker's step writer (durable.record_steps) is fenced the same way."""
    run_id, attempt, worker = claimed_run(conn, expired=True)
    loop = asyncio.new_event_loop()
    batch = [_Pending(run_id, attempt, "llm#0", 0, "llm", "succeeded", '"summary"', None, 0.1,
                      loop.create_future())]
    written: list[dict[tuple[int, str], int]] = []
    with psycopg.connect(dsn) as rescuer:
        assert run_id in rescue(app, rescuer)
        thread = threading.Thread(target=lambda: written.append(app.db.execute(record_steps_op(worker, batch))))
        thread.start()
        _wait_until_blocked(conn, "pgqueue.record_steps(")
        rescuer.commit()
        thread.join(30)
    loop.close()
    assert written == [{}]
    assert conn.execute("SELECT count(*) FROM pgqueue.steps WHERE run_id = %s", (run_id,)).fetchone() == (0,)


def _wait_until_blocked(conn: Conn, statement_text: str) -> None:
    """Until a backend running `statement_text` waits for a lock (polling the server's state)."""
    for _ in range(2000):
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                           " AND strpos(query, %s) > 0", (statement_text,)).fetchone()
        if row and row[0]:
            return
        conn.execute("SELECT pg_sleep(0.01)")
    raise AssertionError(f"no backend running {statement_text!r} waited for a lock")


def test_a_cancel_racing_a_claim_waits_for_it_instead_of_deadlocking(app: PgQueue, dsn: str, conn: Conn) -> None:
    """A claim locks a run's ready row (its SKIP LOCKED read), then the run's row (its UPDATE). A
    cancel arriving in between waits for the ready row before it locks the run: the claim
    finishes, and the cancel asks the now running run to stop (no deadlock, no error)."""
    [(run_id,)] = conn.execute("SELECT pgqueue.enqueue('fenced', '{}', queue => %s)", (QUEUE,)).fetchall()
    results: list[object] = []
    with psycopg.connect(dsn) as claimer:
        # the claim's two steps, written out so that the cancel can come between them
        assert claimer.execute("SELECT run_id FROM pgqueue.ready WHERE run_id = %s FOR UPDATE SKIP LOCKED",
                               (run_id,)).fetchall() == [(run_id,)]

        def cancel() -> None:  # the SQL function itself: app.cancel would retry a deadlock
            try:
                with psycopg.connect(dsn, autocommit=True) as canceller:
                    results.append(canceller.execute("SELECT pgqueue.cancel_run(%s)", (run_id,)).fetchone())
            except psycopg.Error as exc:  # a deadlock ends here
                results.append(exc)

        thread = threading.Thread(target=cancel)
        thread.start()
        _wait_until_blocked(conn, "pgqueue.cancel_run(")
        claimer.execute("DELETE FROM pgqueue.ready WHERE run_id = %s", (run_id,))
        claimer.execute("UPDATE pgqueue.runs SET status = 'running', attempt = attempt + 1, worker_id = %s,"
                        " lease_expires_at = now() + interval '30 seconds' WHERE id = %s",
                        (str(uuid.uuid4()), run_id))
        claimer.commit()
        thread.join(30)
    assert results == [("cancel_requested",)], results
    assert conn.execute("SELECT status, cancel_requested FROM pgqueue.runs WHERE id = %s",
                        (run_id,)).fetchone() == ("running", True)
