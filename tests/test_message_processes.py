"""Messages across a worker SIGKILL: real `pgqueue worker` processes, messages sent before,
during and after the crash; each taken once, in send order."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import bind
from processes import FAST, Workers, sql, wait_until

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]


@pytest.fixture
def message_app(dsn: str) -> Iterator[Any]:
    import message_app

    message_app.prepare(dsn)
    yield message_app
    bind(message_app.app, None)


@pytest.fixture
def workers(dsn: str, message_app: Any, tmp_path: Path) -> Iterator[Workers]:
    group = Workers(dsn, tmp_path, app="message_app:app")
    yield group
    group.stop_all()


def took(dsn: str, run_id: int, pid: int) -> list[int]:
    return [r[0] for r in sql(dsn, "SELECT n FROM took WHERE run_id = %s AND pid = %s ORDER BY at", (run_id, pid))]


def segments(values: list[int]) -> list[list[int]]:
    """VALUES cut before each 0: what each execution of the run's code saw."""
    out: list[list[int]] = []
    for value in values:
        if value == 0 or not out:
            out.append([])
        out[-1].append(value)
    return out


def test_messages_are_taken_once_in_order_across_a_worker_sigkill(message_app: Any, workers: Workers,
                                                                 dsn: str) -> None:
    app = message_app.app
    handle = message_app.slow_inbox.enqueue(60)
    sent = [app.send(handle.id, "note", {"n": n}) for n in range(30)]  # before it starts
    victim = workers.start("--concurrency", "2", *FAST)
    wait_until(lambda: len(took(dsn, handle.id, victim.pid)) >= 8, what="the first worker to take 8 messages")
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    first = took(dsn, handle.id, victim.pid)
    # sent while no worker holds the run (its lease not yet expired): kept in its mailbox
    sent += [app.send(handle.id, "note", {"n": n}) for n in range(30, 45)]
    survivor = workers.start("--concurrency", "2", *FAST)
    wait_until(lambda: sql(dsn, "SELECT status FROM pgqueue.runs WHERE id = %s", (handle.id,))[0][0] == "waiting",
               what="the run to take every message sent so far and wait for more")
    sent += [app.send(handle.id, "note", {"n": n}) for n in range(45, 60)]  # each wakes the waiting run
    assert handle.result(timeout=120) == list(range(60))

    # each message was taken by exactly one receive step, in send order
    steps = sql(dsn, "SELECT (output ->> 'message_id')::bigint FROM pgqueue.steps "
                     "WHERE run_id = %s AND name = 'receive:note' ORDER BY seq", (handle.id,))
    assert [s[0] for s in steps] == sent
    # the killed attempt saw messages 0..k-1 in order; each later execution (the retry, then one
    # per wake-up) replayed the messages taken before (the same ones, from the steps) and went on
    assert first == list(range(len(first)))
    executions = segments(took(dsn, handle.id, survivor.pid))
    assert all(seen == list(range(len(seen))) for seen in executions)
    assert executions[-1] == list(range(60)) and len(executions[0]) > len(first)
    attempts = sql(dsn, "SELECT count(*) FROM pgqueue.attempts WHERE run_id = %s AND outcome = 'suspended'",
                   (handle.id,))
    assert attempts[0][0] >= 1  # it did suspend in a receive and was woken by sends
