"""Testing an application with pgqueue's testing kit: copy this file next to your tests.

Setup (once): pgqueue's pytest plugin is active wherever pgqueue is installed. Name your app in
pytest's configuration, so that the `pgqueue_app` fixture binds it to a throwaway database:

    # pyproject.toml
    [tool.pytest.ini_options]
    pgqueue_app = "signup_app:app"        # module:attribute of your PgQueue

Each test then gets a migrated database of its own (an embedded PostgreSQL started for the
session, or the server at PGQUEUE_TEST_DSN), `drain(app)` runs what is due through the real
worker in this process, `pgqueue_clock` moves the database's clock, and `call(app, task, ...)`
runs one task with a real run context.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest

from pgqueue import PgQueue
from pgqueue.testing import Clock, RunSuspended, assert_enqueued, call, drain, enqueued
from signup_app import OUTBOX, USERS, daily_digest, send_email, signup


@pytest.fixture(autouse=True)
def fakes() -> Iterator[None]:
    OUTBOX.clear()
    USERS.clear()
    yield


def test_a_confirmed_signup_is_welcomed_then_asked_how_it_goes(pgqueue_app: PgQueue, pgqueue_clock: Clock) -> None:
    handle = signup.enqueue("ann@example.com")
    drain(pgqueue_app).raise_failures()           # signup, its welcome email, signup again: now waiting
    assert OUTBOX == [("ann@example.com", "welcome")]
    assert handle.status() == "waiting"

    pgqueue_app.send_event("confirmed", "ann@example.com", True)
    drain(pgqueue_app)                            # confirmed: the run sleeps for a day
    assert handle.status() == "sleeping"

    pgqueue_clock.advance(days=1)                 # no waiting: the database's clock moves
    drain(pgqueue_app)
    assert handle.result() == "active"
    assert OUTBOX[-1] == ("ann@example.com", "how is it going?")
    assert USERS == {"ann@example.com": 1}        # the step ran once, though the run resumed 3 times


def test_an_unconfirmed_account_is_closed_after_three_days(pgqueue_app: PgQueue, pgqueue_clock: Clock) -> None:
    handle = signup.enqueue("bob@example.com")
    drain(pgqueue_app)
    pgqueue_clock.advance(days=3, minutes=1)      # past the wait's timeout
    drained = drain(pgqueue_app)
    assert handle.result() == "closed"
    # three mornings passed in one jump: the digest fired once (the schedule's misfire policy)
    assert drained.cron_runs == 1
    assert {run.task for run in drained.runs} == {"signup", "send_email", "daily_digest"}
    assert_enqueued(pgqueue_app, send_email, to="bob@example.com", subject="account closed")


def test_call_runs_one_task_here_with_a_real_run_context(pgqueue_app: PgQueue) -> None:
    assert call(pgqueue_app, send_email, "cy@example.com", "hello") == "sent 'hello' to cy@example.com"
    with pytest.raises(RunSuspended) as suspended:  # it waits for its child, which nothing ran yet
        call(pgqueue_app, signup, "dee@example.com")
    assert USERS == {"dee@example.com": 1}
    [welcome] = assert_enqueued(pgqueue_app, send_email, to="dee@example.com", subject="welcome")
    assert welcome.parent_id == suspended.value.run_id
    drain(pgqueue_app)                            # the child, then the parent up to its wait
    assert pgqueue_app.get_run(suspended.value.run_id).status() == "waiting"


def test_the_digest_goes_out_at_eight(pgqueue_app: PgQueue, pgqueue_clock: Clock) -> None:
    USERS.update({"ann@example.com": 1, "bob@example.com": 2})
    drain(pgqueue_app)                            # registers the schedule: its first tick is the next 08:00
    assert enqueued(pgqueue_app, daily_digest) == []
    now = pgqueue_clock.now()
    eight = now.replace(hour=8, minute=0, second=0, microsecond=0)
    pgqueue_clock.travel_to((eight if eight > now else eight + timedelta(days=1)) + timedelta(seconds=5))
    drained = drain(pgqueue_app)
    assert drained.cron_runs == 1
    assert sorted(OUTBOX) == [("ann@example.com", "your daily digest"), ("bob@example.com", "your daily digest")]
