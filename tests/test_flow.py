"""Flow control decided by the claim: concurrency limits per key, strategies, fairness across
keys, rate limits and holds. Most tests call `pgqueue.claim` directly, from several
connections, to control the interleavings exactly."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from conftest import running_worker, wait_for
from pgqueue import Concurrency, InvalidInput, PgQueue, RateLimit, RunNotFound
from pgqueue.metrics import gauges_op

Conn = psycopg.Connection[tuple[Any, ...]]

app = PgQueue()
app.rate_limit("llm", limit=5, per=1)
app.rate_limit("per_user", limit=2, per=10)


@app.task(concurrency=Concurrency(key="tenant", max_running=2))
def limited(tenant: str, n: int = 0) -> None: ...


@app.task(concurrency=Concurrency(key=lambda data: f"org-{data['org']}", max_running=1, strategy="cancel_newest"))
def newest_cancelled(org: int, n: int = 0) -> None: ...


@app.task(concurrency=Concurrency(key="doc", max_running=1, strategy="cancel_oldest"))
def oldest_cancelled(doc: str, n: int = 0) -> None: ...


@app.task(concurrency=Concurrency(key="tenant", max_running=1000))
def fair(tenant: str, n: int = 0) -> None: ...


@app.task
def plain(n: int = 0) -> None: ...


@app.task(rate_limits=[RateLimit("llm", units="tokens")])
def llm_call(tokens: int) -> None: ...


@app.task(rate_limits=[RateLimit("per_user", key="user")])
def per_user(user: str) -> None: ...


ingest = app.workflow("ingest", concurrency=Concurrency(key="tenant", max_running=1))


@ingest.node()
def fetch(tenant: str) -> str:
    return tenant


@pytest.fixture(scope="module", autouse=True)
def registered(dsn: str) -> Iterator[None]:
    app.db.use_dsn(dsn)
    app.register_tasks()
    yield
    app.close()


@pytest.fixture(autouse=True)
def empty_queue(conn: Conn) -> None:
    conn.execute("DELETE FROM pgqueue.ready")
    conn.execute("UPDATE pgqueue.runs SET status = 'succeeded' WHERE status IN ('queued', 'running')")
    conn.execute("UPDATE pgqueue.rate_limits SET tokens = capacity, held_until = NULL, refilled_at = now()")


def claim(conn: Conn, n: int = 10, queues: tuple[str, ...] = ("default",)) -> list[int]:
    rows = conn.execute("SELECT id FROM pgqueue.claim(%s, %s, %s, 30)", (uuid.uuid4(), list(queues), n)).fetchall()
    return sorted(row[0] for row in rows)


def finish(conn: Conn, ids: list[int]) -> None:
    conn.execute("UPDATE pgqueue.runs SET status = 'succeeded', finished_at = now() WHERE id = ANY(%s)", (ids,))


def running_per_key(conn: Conn, task: str) -> dict[str, int]:
    return dict(conn.execute("SELECT concurrency_key, count(*) FROM pgqueue.runs WHERE task = %s"
                             " AND status = 'running' GROUP BY 1", (task,)).fetchall())


def test_a_key_never_has_more_running_runs_than_its_limit(conn: Conn) -> None:
    a = [h.id for h in limited.enqueue_many([{"tenant": "a", "n": i} for i in range(5)])]
    b = [h.id for h in limited.enqueue_many([{"tenant": "b", "n": i} for i in range(5)])]
    first = claim(conn)
    assert running_per_key(conn, "limited") == {"a": 2, "b": 2}
    assert claim(conn) == []  # the queued runs wait: not claimed, not failed, no attempt
    assert conn.execute("SELECT count(*) FROM pgqueue.runs WHERE id = ANY(%s) AND status = 'queued'"
                        " AND attempt = 0", (a + b,)).fetchone() == (6,)
    finish(conn, [i for i in first if i in a][:1])
    assert [i for i in claim(conn)] == [a[2]]
    assert running_per_key(conn, "limited") == {"a": 2, "b": 2}


def test_a_workflow_limits_its_runs_per_key(conn: Conn) -> None:
    first, _, other = ingest.enqueue(tenant="w"), ingest.enqueue(tenant="w"), ingest.enqueue(tenant="v")
    assert claim(conn) == sorted([first.id, other.id])


def test_limit_changes_at_runtime_per_key_and_default(conn: Conn) -> None:
    limited.enqueue_many([{"tenant": t, "n": i} for t in ("small", "big") for i in range(6)])
    app.set_concurrency_limit("limited", 5, key="big")
    claim(conn, 20)
    assert running_per_key(conn, "limited") == {"small": 2, "big": 5}
    conn.execute("SELECT pgqueue.set_concurrency_limit('limited', 3)")  # the default, from SQL
    claim(conn, 20)
    assert running_per_key(conn, "limited") == {"small": 3, "big": 5}
    assert app.delete_concurrency_limit("limited", key="big") is True
    app.register_tasks()  # code does not overwrite a runtime change of the default
    assert conn.execute("SELECT max_running, source FROM pgqueue.concurrency_limits"
                        " WHERE name = 'limited' AND key = '*'").fetchone() == (3, "runtime")
    conn.execute("DELETE FROM pgqueue.concurrency_limits WHERE name = 'limited'")
    app.register_tasks()
    assert conn.execute("SELECT max_running, source FROM pgqueue.concurrency_limits"
                        " WHERE name = 'limited' AND key = '*'").fetchone() == (2, "code")


def test_bad_limits_are_refused_and_change_nothing(conn: Conn) -> None:
    with pytest.raises(InvalidInput, match="at least 1"):
        app.set_concurrency_limit("limited", 0)
    with pytest.raises(InvalidInput, match="unknown concurrency strategy"):
        app.set_concurrency_limit("limited", 3, strategy="random")
    with pytest.raises(InvalidInput, match="positive limit"):
        app.set_rate_limit("llm", limit=0)
    with pytest.raises(RunNotFound, match='no rate limit named "nope"'):
        app.hold_rate_limit("nope", 5)
    with pytest.raises(RunNotFound, match='no rate limit named "nope"'):
        app.set_rate_limit("nope", limit=5, key="user-1")
    assert conn.execute("SELECT max_running FROM pgqueue.concurrency_limits WHERE name = 'limited'"
                        " AND key = '*'").fetchone() == (2,)
    with pytest.raises(InvalidInput, match="tenant: Field required"):
        limited.enqueue_many([{"tenant": "a"}, {"n": 1}])  # type: ignore[list-item]
    assert conn.execute("SELECT count(*) FROM pgqueue.ready").fetchone() == (0,)


def test_plain_sql_enqueues_get_the_keys_workers_registered(conn: Conn) -> None:
    run_id = conn.execute("""SELECT pgqueue.enqueue('limited', '{"tenant": "sql", "n": 1}')""").fetchone()
    assert conn.execute("SELECT concurrency_key FROM pgqueue.runs WHERE id = %s", run_id).fetchone() == ("sql",)
    run_id = conn.execute("SELECT pgqueue.enqueue('llm_call', %s)", ('{"tokens": 3}',)).fetchone()
    cost = conn.execute("SELECT rate_cost FROM pgqueue.runs WHERE id = %s", run_id).fetchone()
    assert cost == ([{"limit": "llm", "key": "", "units": 3}],)
    with pytest.raises(psycopg.Error, match='has no field "tenant"'):
        conn.execute("SELECT pgqueue.enqueue('limited', '{}')")
    with pytest.raises(psycopg.Error, match="computes its concurrency key in Python"):
        conn.execute("""SELECT pgqueue.enqueue('newest_cancelled', '{"org": 1}')""")
    conn.execute("""SELECT pgqueue.enqueue('newest_cancelled', '{"org": 1}', concurrency_key => 'org-1')""")


def test_two_claimers_interleaved_step_by_step_cannot_exceed_the_limit(dsn: str, conn: Conn) -> None:
    """The count of running runs is taken after the key's lock is granted, in a new snapshot."""
    ids = [h.id for h in limited.enqueue_many([{"tenant": "race", "n": i} for i in range(6)])]
    with psycopg.connect(dsn) as first, psycopg.connect(dsn) as second:
        first.execute("SELECT 1")        # both transactions are open from here on
        second.execute("SELECT now()")   # second's transaction started before first's claim
        got_first = claim(first, 1)       # takes 1 of 2 slots, holds the key's lock, not committed
        assert len(got_first) == 1
        assert claim(second, 10) == []   # the key is busy: skipped, never waited for
        first.commit()
        # same open transaction as before first committed: the claim's count must see first's run
        got_second = claim(second, 10)
        assert len(got_second) == 1
        second.commit()
    assert running_per_key(conn, "limited") == {"race": 2}
    assert set(got_first + got_second) <= set(ids)


def test_many_connections_claiming_at_once_respect_the_limit(dsn: str, conn: Conn) -> None:
    limited.enqueue_many([{"tenant": f"t{i % 4}", "n": i} for i in range(400)])
    worst: list[int] = [0]
    stop = threading.Event()
    errors: list[BaseException] = []

    def watch() -> None:
        with psycopg.connect(dsn, autocommit=True) as c:
            while not stop.is_set():
                counts = running_per_key(c, "limited")
                worst[0] = max([worst[0], *counts.values()])

    def claimer() -> None:
        try:
            with psycopg.connect(dsn, autocommit=True) as c:
                for _ in range(200):
                    got = claim(c, 3)
                    finish(c, got[: len(got) // 2 + 1] if got else [])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    watcher = threading.Thread(target=watch)
    watcher.start()
    threads = [threading.Thread(target=claimer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    watcher.join()
    assert not errors
    assert 1 <= worst[0] <= 2


def test_cancel_newest_cancels_what_would_exceed_the_limit(conn: Conn) -> None:
    ids = [h.id for h in newest_cancelled.enqueue_many([{"org": 1, "n": i} for i in range(3)])]
    assert claim(conn) == ids[:1]
    rows = conn.execute("SELECT id, status, error ->> 'type' FROM pgqueue.runs WHERE id = ANY(%s) ORDER BY id",
                        (ids,)).fetchall()
    assert rows == [(ids[0], "running", None), (ids[1], "cancelled", "ConcurrencyLimit"),
                    (ids[2], "cancelled", "ConcurrencyLimit")]


def test_cancel_oldest_lets_the_newest_run_win(conn: Conn) -> None:
    first = oldest_cancelled.enqueue(doc="d", n=0).id
    assert claim(conn) == [first]
    second, third = (oldest_cancelled.enqueue(doc="d", n=i).id for i in (1, 2))
    assert claim(conn) == []  # the newest waits for the oldest to stop
    state = {row[0]: row[1:] for row in conn.execute(
        "SELECT id, status, cancel_requested FROM pgqueue.runs WHERE id = ANY(%s)", ([first, second, third],))}
    assert state[first] == ("running", True)
    assert state[second] == ("cancelled", False)
    assert state[third] == ("queued", False)
    conn.execute("UPDATE pgqueue.runs SET status = 'cancelled' WHERE id = %s", (first,))  # its worker stopped it
    assert claim(conn) == [third]


def test_a_late_key_is_served_round_robin_not_behind_the_backlog(conn: Conn) -> None:
    """Fairness bound: with K keys queued, a key's n-th run is claimed within about K * n claims
    of the moment it was enqueued (plus one claim batch)."""
    fair.enqueue_many([{"tenant": "A", "n": i} for i in range(20_000)])
    for _ in range(5):                                      # A is being served
        finish(conn, claim(conn, 10))
    late = {h.id for h in fair.enqueue_many([{"tenant": "B", "n": i} for i in range(20)])}
    claimed = 0
    while late:
        got = claim(conn, 10)
        claimed += len(got)
        late -= set(got)
        finish(conn, got)
        assert claimed <= 2 * 20 + 10, "B waited behind A's backlog"
    assert claimed <= 50


def test_unkeyed_and_keyed_runs_alternate_and_priorities_come_first(conn: Conn) -> None:
    keyed = [h.id for h in fair.enqueue_many([{"tenant": "A", "n": i} for i in range(4)])]
    unkeyed = [h.id for h in plain.enqueue_many([{"n": i} for i in range(4)])]
    urgent = plain.options(priority=5).enqueue(n=99).id
    order = [row[0] for row in conn.execute(
        "SELECT id FROM pgqueue.claim(%s, '{default}', 5, 30)", (uuid.uuid4(),)).fetchall()]
    assert set(order) == {urgent, *keyed[:2], *unkeyed[:2]}


def test_rate_limit_defers_runs_to_when_units_will_be_there(conn: Conn) -> None:
    ids = [h.id for h in llm_call.enqueue_many([{"tokens": 2}] * 6)]
    got = claim(conn, 10)
    assert got == ids[:2]  # 5 units of burst: two runs of 2 units
    deferred = conn.execute(
        "SELECT extract(epoch FROM r.run_at - now()) FROM pgqueue.ready r WHERE r.run_id = ANY(%s) ORDER BY r.run_id",
        (ids[2:],)).fetchall()
    waits = [round(float(w[0]), 1) for w in deferred]
    # 1 unit left, 5 units a second: 2 more units in 0.2 s, then every 0.4 s
    assert waits == pytest.approx([0.2, 0.6, 1.0, 1.4], abs=0.15)
    assert conn.execute("SELECT max(attempt), max(failures) FROM pgqueue.runs WHERE id = ANY(%s)",
                        (ids[2:],)).fetchone() == (0, 0)


def test_rate_limit_buckets_per_key_and_holds(conn: Conn) -> None:
    ids = {u: [h.id for h in per_user.enqueue_many([{"user": u}] * 5)] for u in ("ann", "bob")}
    got = claim(conn, 10)
    assert got == sorted(ids["ann"][:2] + ids["bob"][:2])  # a bucket per user: 2 per 10 s each
    assert conn.execute("SELECT key, capacity, source FROM pgqueue.rate_limits WHERE name = 'per_user' ORDER BY key"
                        ).fetchall() == [("", 2.0, "code"), ("ann", 2.0, "code"), ("bob", 2.0, "code")]
    app.set_rate_limit("per_user", limit=4, per=10, key="bob")  # bob is on a bigger plan
    # five seconds later (the buckets' clock moved back): ann earned 1 unit, bob 2
    conn.execute("UPDATE pgqueue.rate_limits SET refilled_at = refilled_at - interval '5 s' WHERE name = 'per_user'")
    conn.execute("UPDATE pgqueue.ready SET run_at = now()")
    assert claim(conn, 10) == sorted(ids["ann"][2:3] + ids["bob"][2:4])

    more = [h.id for h in llm_call.enqueue_many([{"tokens": 1}] * 2)]
    until = app.hold_rate_limit("llm", 30)
    assert claim(conn, 10) == []
    wait = conn.execute("SELECT min(run_at) FROM pgqueue.ready WHERE run_id = ANY(%s)", (more,)).fetchone()
    assert wait == (until,)
    gauges = app.db.execute(gauges_op())
    assert gauges["pgqueue_rate_limit_held_keys"][(("limit", "llm"),)] == 1
    assert gauges["pgqueue_rate_limit_deferred_runs"][(("limit", "per_user"),)] >= 4
    assert gauges["pgqueue_rate_limit_available_units"][(("limit", "llm"),)] <= 5


def test_metrics_count_runs_waiting_for_a_slot(conn: Conn) -> None:
    limited.enqueue_many([{"tenant": "m", "n": i} for i in range(5)])
    claim(conn)
    assert app.db.execute(gauges_op())["pgqueue_concurrency_waiting_runs"] == {(("task", "limited"),): 3}


async def test_a_task_raising_rate_limited_holds_the_key_for_every_worker(dsn: str) -> None:
    import flow_app
    from conftest import bind

    bind(flow_app.app, dsn)
    try:
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute(flow_app.SPANS_DDL)
        async with running_worker(flow_app.app, concurrency=4):
            busy = await flow_app.call_provider.enqueue_async(n=0, busy=True)
            await wait_for(lambda: _held(dsn), what="the hold")
            others = [await flow_app.call_provider.enqueue_async(n=i) for i in range(1, 4)]
            for handle in [busy, *others]:
                assert await handle.result(timeout=20) is not None
        with psycopg.connect(dsn, autocommit=True) as c:
            held_at, = c.execute("SELECT started_at FROM spans WHERE note = '429'").fetchone()  # type: ignore[misc]
            first_after, = c.execute("SELECT min(started_at) FROM spans WHERE note IS NULL").fetchone()  # type: ignore[misc]
            assert (first_after - held_at).total_seconds() >= 1.9
            assert c.execute("SELECT failures FROM pgqueue.runs WHERE id = %s", (busy.id,)).fetchone() == (0,)
    finally:
        await flow_app.app.aclose()
        bind(flow_app.app, None)


async def _held(dsn: str) -> bool:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as c:
        row = await (await c.execute("SELECT held_until > now() FROM pgqueue.rate_limits"
                                     " WHERE name = 'provider' AND key = ''")).fetchone()
        return bool(row and row[0])


def test_a_task_using_an_undeclared_rate_limit_stops_the_worker_start(dsn: str) -> None:
    other = PgQueue(dsn)

    @other.task(rate_limits=[RateLimit("undeclared")])
    def uses() -> None: ...

    with pytest.raises(Exception, match="rate limit 'undeclared', which is not declared"):
        other.register_tasks()
    other.close()


def test_cli_sets_limits_and_status_shows_use(cli_env: dict[str, str], conn: Conn) -> None:
    from test_cli import assert_one_line_error, pgqueue

    limited.enqueue_many([{"tenant": "cli", "n": i} for i in range(4)])
    claim(conn)
    assert pgqueue("limits", "set", "limited", "3", "--key", "cli", env=cli_env).returncode == 0
    assert pgqueue("limits", "rate", "llm", "600", "--per", "60", "--burst", "50", env=cli_env).returncode == 0
    assert pgqueue("limits", "hold", "llm", "30", env=cli_env).returncode == 0
    status = pgqueue("status", "--json", env=cli_env)
    data = json.loads(status.stdout)
    key = next(k for k in data["concurrency_keys"] if k["key"] == "cli")
    assert (key["running"], key["max_running"], key["queued"]) == (2, 3, 2)
    llm = next(r for r in data["rate_limits"] if r["name"] == "llm")
    assert (llm["capacity"], llm["per_second"], llm["held_until"] is not None) == (50, 10, True)
    text = pgqueue("status", env=cli_env).stdout
    assert "2/3" in text and "llm" in text
    listing = pgqueue("limits", "list", env=cli_env)
    assert "runtime" in listing.stdout and "cli" in listing.stdout
    assert pgqueue("limits", "unset", "limited", "--key", "cli", env=cli_env).returncode == 0
    assert_one_line_error(pgqueue("limits", "unset", "limited", "--key", "cli", env=cli_env), "no concurrency limit")
    assert_one_line_error(pgqueue("limits", "hold", "nope", "5", env=cli_env), 'no rate limit named "nope"')
    bad = pgqueue("limits", "set", "limited", "0", env=cli_env)
    assert bad.returncode == 2 and "0 is not in the range" in bad.stderr


def test_a_full_key_with_a_deep_backlog_does_not_hide_other_keys(conn: Conn) -> None:
    """B's next run sits behind 2,500 runs of the full key A: the claim still finds it (through
    the skip scan over keys), and in claim order."""
    limited.enqueue_many([{"tenant": "deep-A", "n": i} for i in range(5000)])
    b_runs = [h.id for h in fair.enqueue_many([{"tenant": "B", "n": i} for i in range(3000)])]
    finish(conn, [i for i in claim(conn, 4) if i in b_runs])       # A is full (2 running) from here on
    done: set[int] = set()
    while len(done) < 2500:
        got = claim(conn, 100)
        assert got and set(got) <= set(b_runs)
        done |= set(got)
        finish(conn, got)
    front = conn.execute("SELECT min(run_id) FROM pgqueue.ready WHERE concurrency_key = 'B'").fetchone()
    ahead = conn.execute("SELECT count(*) FROM pgqueue.ready r, pgqueue.ready b WHERE b.run_id = %s"
                         " AND r.concurrency_key = 'deep-A' AND r.fair_seq < b.fair_seq", front).fetchone()
    assert ahead is not None and ahead[0] > 1000   # deeper than the claim's bounded scan
    assert claim(conn, 10)[0] == front[0]           # type: ignore[index]
    assert running_per_key(conn, "limited") == {"deep-A": 2}
