"""Keyed sessions in-process: one invocation per key at a time, arrival order, state updates
applied once (also across retries), reading the state, and bad input refused clearly."""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import subprocess
import sys
import threading
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from conftest import bind, running_worker, wait_for
from pgqueue import PgQueue
from pgqueue.errors import InvalidInput, PgQueueError, RunFailed, TaskDefinitionError, UnknownTask
from pgqueue.status import RunStatus
from pgqueue.testing import call, drain
from processes import wait_until

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def sessions(dsn: str) -> Iterator[Any]:
    import session_app

    bind(session_app.app, dsn)
    session_app.app.register_tasks()
    session_app.INTERVALS.clear()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(session_app.EFFECTS_DDL)
        conn.execute("TRUNCATE session_effects")
    yield session_app
    bind(session_app.app, None)


async def result(handle: Any) -> Any:
    """The run's result, waited for in a thread (the worker runs on this event loop)."""
    return await asyncio.to_thread(handle.result, 60)


def statuses(dsn: str, ids: list[int]) -> dict[str, int]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT status, count(*) FROM pgqueue.runs WHERE id = ANY(%s) GROUP BY 1", (ids,))
        return dict(rows.fetchall())  # type: ignore[arg-type]


def overlaps(intervals: list[tuple[str, int, int, float, float]]) -> list[tuple[Any, Any]]:
    """Pairs of invocations of one key whose code ran at the same time."""
    by_key: dict[str, list[tuple[float, float, int]]] = defaultdict(list)
    for key, n, _, start, end in intervals:
        by_key[key].append((start, end, n))
    found = []
    for spans in by_key.values():
        spans.sort()
        for before, after in itertools.pairwise(spans):
            if after[0] < before[1]:
                found.append((before, after))
    return found


async def test_1000_invocations_over_50_keys_run_one_at_a_time_in_order_and_lose_no_update(
        sessions: Any, dsn: str) -> None:
    rng = random.Random(18)
    keys = [f"user-{k}" for k in range(50)]
    items = [{"user_id": rng.choice(keys), "n": n, "fail_first": rng.random() < 0.05,
              "pause": rng.choice([0, 0, 0.002, 0.01])} for n in range(1000)]
    # in several enqueues (some bulk, some one by one): arrival order is the order of enqueue
    handles = []
    for start in range(0, 1000, 100):
        if start % 200 == 0:
            handles += sessions.counter.enqueue_many(items[start:start + 100])
        else:
            handles += [sessions.counter.enqueue(**item) for item in items[start:start + 100]]
    ids = [h.id for h in handles]
    async with running_worker(sessions.app, concurrency=20), running_worker(sessions.app, concurrency=20):
        async def done() -> bool:
            return statuses(dsn, ids).get(RunStatus.SUCCEEDED, 0) == 1000
        await wait_for(done, timeout=240, what="1,000 session invocations")

    assert overlaps(sessions.INTERVALS) == []
    expected: dict[str, list[int]] = defaultdict(list)
    for item in items:
        expected[item["user_id"]].append(item["n"])
    for key in keys:
        state = sessions.app.get_session_state("counter", key)
        assert state.get("count", 0) == len(expected[key])  # no update lost, none applied twice
        assert state.get("order", []) == expected[key]  # arrival order, retries kept their place
    # retried invocations ran again (each time alone on its key: no overlap above); an attempt
    # cut off by the database (a lost lease on a loaded machine) may add one more
    retried = [i["n"] for i in items if i["fail_first"]]
    attempts = defaultdict(set)
    for _, n, attempt, _, _ in sessions.INTERVALS:
        attempts[n].add(attempt)
    assert retried and all({1, 2} <= attempts[n] for n in retried)
    with psycopg.connect(dsn) as conn:
        # the inbox is empty and every key is idle again
        assert conn.execute("SELECT count(*) FROM pgqueue.session_inbox").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM pgqueue.session_keys WHERE session = 'counter' "
                            "AND active_run IS NOT NULL").fetchone() == (0,)
        assert conn.execute("SELECT sum(invocations) FROM pgqueue.session_keys WHERE session = 'counter'"
                            ).fetchone() == (1000,)


async def test_a_later_invocation_waits_while_the_key_is_held_by_a_retrying_one(sessions: Any, dsn: str) -> None:
    first = sessions.counter.enqueue(user_id="solo", n=1, fail_first=True)
    second = sessions.counter.enqueue(user_id="solo", n=2)
    other = sessions.counter.enqueue(user_id="someone-else", n=3)
    with psycopg.connect(dsn, autocommit=True) as conn:
        # only the first invocation of each key is claimable; the second waits in the inbox
        ready = {r for (r,) in conn.execute("SELECT run_id FROM pgqueue.ready WHERE run_id = ANY(%s)",
                                            ([first.id, second.id, other.id],))}
        assert ready == {first.id, other.id}
        assert conn.execute("SELECT run_id FROM pgqueue.session_inbox").fetchall() == [(second.id,)]
    async with running_worker(sessions.app, concurrency=4):
        assert await result(second) == 2
    assert first.result(timeout=5) == 1 and other.result(timeout=5) == 3
    assert sessions.app.get_session_state("counter", "solo") == {"count": 2, "order": [1, 2]}
    order = [(n, attempt) for key, n, attempt, _, _ in sorted(sessions.INTERVALS, key=lambda i: i[3])
             if key == "solo"]
    assert order == [(1, 1), (1, 2), (2, 1)]


async def test_cancelling_a_waiting_or_holding_invocation_hands_the_key_on(sessions: Any, dsn: str) -> None:
    holder = sessions.counter.enqueue(user_id="c", n=1)
    waiting = sessions.counter.enqueue(user_id="c", n=2)
    last = sessions.counter.enqueue(user_id="c", n=3)
    assert sessions.app.cancel(waiting.id) == "cancelled"
    assert sessions.app.cancel(holder.id) == "cancelled"
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT active_run FROM pgqueue.session_keys WHERE session = 'counter' AND key = 'c'"
                            ).fetchone() == (last.id,)
        assert conn.execute("SELECT count(*) FROM pgqueue.session_inbox").fetchone() == (0,)
    async with running_worker(sessions.app, concurrency=2):
        assert await result(last) == 3
    assert sessions.app.get_session_state("counter", "c") == {"count": 1, "order": [3]}
    # a replayed invocation queues again behind the key's current holder, from the current state
    sessions.app.replay(holder.id)
    async with running_worker(sessions.app, concurrency=2):
        assert await result(holder) == 1
    assert sessions.app.get_session_state("counter", "c") == {"count": 2, "order": [3, 1]}


async def test_sync_sessions_and_sql_producers(sessions: Any, dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        ids = [conn.execute("SELECT pgqueue.enqueue('counter_sync', %s::jsonb)",
                            (f'{{"user_id": "sql", "n": {n}}}',)).fetchone()[0] for n in range(5)]  # type: ignore[index]
    async with running_worker(sessions.app, concurrency=4):
        async def done() -> bool:
            return statuses(dsn, ids).get(RunStatus.SUCCEEDED, 0) == 5
        await wait_for(done, what="sync session invocations")
    with psycopg.connect(dsn) as conn:
        state = conn.execute("SELECT pgqueue.session_state('counter_sync', 'sql')").fetchone()
    assert state == ({"count": 5, "order": [0, 1, 2, 3, 4]},)
    assert sessions.app.get_session_state("counter_sync", "never-seen") == {}


def test_bad_input_is_refused_clearly(sessions: Any, dsn: str) -> None:
    app = PgQueue(dsn)
    count = "SELECT count(*) FROM pgqueue.runs WHERE task = 'counter'"
    with psycopg.connect(dsn) as conn:
        before = conn.execute(count).fetchone()
    with pytest.raises(TaskDefinitionError, match="key='tenant' is not a field of its input"):
        @app.session("bad", key="tenant")
        async def bad(user_id: str) -> None: ...
    with pytest.raises(TaskDefinitionError, match="takes no concurrency="):
        app.session("bad2", key="user_id", concurrency=object())(lambda user_id: None)
    with pytest.raises(InvalidInput, match="user_id"):
        sessions.counter.enqueue(n=1)  # type: ignore[call-arg]
    with psycopg.connect(dsn, autocommit=True) as conn:
        with pytest.raises(psycopg.Error, match='has no field "user_id"'):
            conn.execute("SELECT pgqueue.enqueue('counter', '{\"n\": 1}')")
        with pytest.raises(psycopg.Error, match='unknown session "nope"'):
            conn.execute("SELECT pgqueue.session_state('nope', 'k')")
        assert conn.execute(count).fetchone() == before  # nothing was stored
    with pytest.raises(UnknownTask, match='unknown session "nope"'):
        sessions.app.get_session_state("nope", "k")


async def test_an_oversized_state_fails_the_invocation_and_keeps_the_last_state(sessions: Any, dsn: str) -> None:
    small = sessions.hoarder.enqueue(user_id="h", size=10)
    big = sessions.hoarder.enqueue(user_id="h", size=2 * 1024 * 1024)
    after = sessions.hoarder.enqueue(user_id="h", size=20)
    plain = sessions.not_a_session.enqueue()
    async with running_worker(sessions.app, concurrency=4):
        assert await result(after) == "kept"
        with pytest.raises(PgQueueError):
            await result(plain)
    assert small.info().status == RunStatus.SUCCEEDED
    info = big.info()
    # refused by the database's limit, not retried (the same state would be refused again)
    assert info.status == RunStatus.FAILED and info.attempt == 1
    assert "the state of session \"hoarder\" key \"h\"" in info.error["message"]
    assert "over the limit" in info.error["message"]
    assert sessions.app.get_session_state("hoarder", "h") == {"blob": "x" * 20}
    assert "ctx.state is for sessions only" in plain.info().error["message"]


def test_the_cli_lists_sessions_and_keys_and_prints_a_state(sessions: Any, cli_env: dict[str, str]) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "pgqueue_cli", *args], env=cli_env, capture_output=True,
                              text=True, timeout=60)

    enqueued = cli("enqueue", "counter_sync", "--input", '{"user_id": "cli", "n": 7}')
    assert enqueued.returncode == 0, enqueued.stderr
    listed = cli("sessions", "list", "--json")
    assert {"name": "counter_sync", "key_field": "user_id"}.items() <= {
        **next(s for s in json.loads(listed.stdout) if s["name"] == "counter_sync")}.items()
    keys = json.loads(cli("sessions", "keys", "counter_sync", "--json").stdout)
    cli_key = next(k for k in keys if k["key"] == "cli")
    assert cli_key["active_run"] is not None and cli_key["waiting"] == 0
    assert json.loads(cli("sessions", "state", "counter_sync", "cli").stdout) == {}  # not run yet
    drain(sessions.app)
    assert json.loads(cli("sessions", "state", "counter_sync", "cli").stdout) == {"count": 1, "order": [7]}
    unknown = cli("sessions", "state", "nope", "k")
    assert unknown.returncode != 0 and 'unknown session "nope"' in unknown.stderr


def test_testing_call_runs_one_invocation_with_its_state(sessions: Any) -> None:
    assert call(sessions.app, sessions.counter_sync, user_id="unit", n=4) == 1
    assert call(sessions.app, sessions.counter_sync, user_id="unit", n=5) == 2
    assert sessions.app.get_session_state("counter_sync", "unit") == {"count": 2, "order": [4, 5]}


async def test_a_run_enqueued_before_the_session_was_declared_fails_clearly(sessions: Any, dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        # a queue named, no registration: the database cannot know it is a session
        conn.execute("DELETE FROM pgqueue.sessions WHERE name = 'counter_sync'")
        conn.execute("UPDATE pgqueue.tasks SET concurrency_key_field = NULL WHERE name = 'counter_sync'")
        (run_id,) = conn.execute("SELECT pgqueue.enqueue('counter_sync', %s::jsonb, queue => 'default')",
                                 ('{"user_id": "early", "n": 1}',)).fetchone()  # type: ignore[misc]
    sessions.app.register_tasks()
    async with running_worker(sessions.app, concurrency=2):
        with pytest.raises(RunFailed, match=r"InvalidInput: .* enqueued before any worker declared the session"):
            await result(sessions.app.get_run(run_id))
    assert sessions.app.get_run(run_id).info().attempt == 1  # not retried


def test_racing_enqueues_and_a_hand_over_take_the_key_one_after_the_other(sessions: Any, dsn: str) -> None:
    """Two connections step by step: an enqueue waits for the key's row lock held by another
    enqueue's (or a hand-over's) open transaction, then sees its outcome."""
    enqueue = "SELECT pgqueue.enqueue('counter', %s::jsonb)"

    def blocked_enqueue(n: int) -> tuple[threading.Thread, list[int]]:
        got: list[int] = []

        def run() -> None:
            with psycopg.connect(dsn, autocommit=True) as b:
                got.append(b.execute(enqueue, (f'{{"user_id": "race", "n": {n}}}',)).fetchone()[0])  # type: ignore[index]
        thread = threading.Thread(target=run)
        thread.start()
        return thread, got

    def waiting_for_a_lock() -> bool:
        with psycopg.connect(dsn, autocommit=True) as c:
            return bool(c.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                  "AND query LIKE 'SELECT pgqueue.enqueue(%%'").fetchone()[0])  # type: ignore[index]

    with psycopg.connect(dsn) as a:
        first = a.execute(enqueue, ('{"user_id": "race", "n": 1}',)).fetchone()[0]  # type: ignore[index]
        thread, second = blocked_enqueue(2)
        wait_until(waiting_for_a_lock, what="the second enqueue to wait for the key")
        a.commit()
        thread.join(30)
        a.execute("SELECT pgqueue.cancel_run(%s)", (first,))  # hands the key on, not committed yet
        thread, third = blocked_enqueue(3)
        wait_until(waiting_for_a_lock, what="the third enqueue to wait for the hand-over")
        a.commit()
        thread.join(30)
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT active_run FROM pgqueue.session_keys WHERE session = 'counter' AND key = 'race'"
                            ).fetchone() == (second[0],)
        assert conn.execute("SELECT run_id FROM pgqueue.session_inbox WHERE key = 'race'").fetchall() == [(third[0],)]
        ready = conn.execute("SELECT run_id FROM pgqueue.ready WHERE run_id = ANY(%s)",
                             ([first, second[0], third[0]],)).fetchall()
        assert ready == [(second[0],)]
