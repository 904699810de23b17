"""A receive and a send racing on one run, driven step by step on two connections: the per-run
message lock makes the send either be found by the receive or find its wait and wake the run;
never a message left in the mailbox of a run that sleeps on."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from pgqueue import PgQueue
from pgqueue.durable import SUSPENDED, Durable
from pgqueue.inbox import Message, receive_op
from pgqueue.ops import execute_on

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def running(dsn: str) -> Iterator[tuple[int, str]]:
    """A run held by a made-up worker (attempt 1), as if a worker executed it now."""
    app = PgQueue(dsn)
    run = app.enqueue("racer", {}, queue="default")
    worker = str(uuid.uuid4())
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM pgqueue.ready WHERE run_id = %s", (run.id,))
        conn.execute("UPDATE pgqueue.runs SET status = 'running', attempt = 1, worker_id = %s, "
                     "lease_expires_at = now() + interval '1 hour', attempt_started_at = now() WHERE id = %s",
                     (worker, run.id))
    yield run.id, worker
    app.close()


def blocked_on_a_lock(dsn: str, pid: int) -> bool:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()
    return row is not None and row[0] == "Lock"


def wait_blocked(dsn: str, pid: int) -> None:
    deadline = time.monotonic() + 10
    while not blocked_on_a_lock(dsn, pid):
        assert time.monotonic() < deadline, "the other connection never waited for the message lock"
        time.sleep(0.02)


def status(dsn: str, run_id: int) -> tuple[Any, ...]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT r.status, EXISTS (SELECT FROM pgqueue.ready q WHERE q.run_id = r.id), "
                           "EXISTS (SELECT FROM pgqueue.message_waits w WHERE w.run_id = r.id) "
                           "FROM pgqueue.runs r WHERE r.id = %s", (run_id,)).fetchone()
    assert row is not None
    return tuple(row)


def test_a_send_during_a_receive_that_suspends_wakes_the_run(dsn: str, running: tuple[int, str]) -> None:
    run_id, worker = running
    with psycopg.connect(dsn) as receiver, psycopg.connect(dsn, autocommit=True) as sender:
        # 1. the receive finds an empty mailbox, registers its wait and suspends: not committed yet
        taken = execute_on(receiver, receive_op(Durable(run_id, 1, worker), "note", None))
        assert taken is SUSPENDED
        # 2. a send now waits for the receive's transaction (the message lock) ...
        sent: list[int] = []
        thread = threading.Thread(target=lambda: sent.append(
            sender.execute("SELECT pgqueue.send_message(%s, 'note', '1')", (run_id,)).fetchone()[0]))  # type: ignore[index]
        thread.start()
        wait_blocked(dsn, sender.info.backend_pid)
        assert not sent
        # 3. ... and, once it commits, finds the wait and wakes the run
        receiver.commit()
        thread.join(10)
    assert sent and status(dsn, run_id) == ("queued", True, False)


def test_a_receive_during_a_send_takes_the_message(dsn: str, running: tuple[int, str]) -> None:
    run_id, worker = running
    with psycopg.connect(dsn) as sender, psycopg.connect(dsn) as receiver:
        # 1. a send, not committed yet
        [message_id] = sender.execute("SELECT pgqueue.send_message(%s, 'note', '2')", (run_id,)).fetchone()  # type: ignore[misc]
        # 2. the receive waits for it (the message lock) ...
        got: list[Any] = []
        thread = threading.Thread(target=lambda: got.append(
            execute_on(receiver, receive_op(Durable(run_id, 1, worker), "note", None))))
        thread.start()
        wait_blocked(dsn, receiver.info.backend_pid)
        # 3. ... and, once the send commits, takes the message instead of suspending
        sender.commit()
        thread.join(10)
        receiver.commit()
    assert isinstance(got[0], Message) and (got[0].id, got[0].payload) == (message_id, 2)
    assert status(dsn, run_id) == ("running", False, False)
