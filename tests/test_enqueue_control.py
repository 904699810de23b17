"""Enqueue control: debounce, singleton and throttle (pgqueue/control.py,
sql/functions/enqueue_control.sql). Races are driven step by step on several connections, and
under many connections enqueueing or claiming at once; the claim is called directly."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from pydantic import BaseModel

from conftest import running_worker
from pgqueue import Batch, Debounce, InvalidInput, PgQueue, Retry, Singleton, TaskDefinitionError, Throttle

Conn = psycopg.Connection[tuple[Any, ...]]

app = PgQueue()


@app.task(debounce=Debounce(key="doc_id", window=30, max_wait=300))
def embed(doc_id: str, text: str = "") -> None: ...


@app.task(debounce=Debounce(key="doc_id", window=0))
def embed_now(doc_id: str, text: str = "") -> None: ...


@app.task(debounce=Debounce(key="doc_id", window=5))
def embed_optional(doc_id: str | None = None) -> None: ...


@app.task(singleton=Singleton(key="doc_id", on_conflict="skip"))
def index_once(doc_id: str, n: int = 0) -> None: ...


@app.task(singleton=Singleton(key="doc_id", on_conflict="replace"))
def index_latest(doc_id: str, n: int = 0) -> None: ...


@app.task(throttle=Throttle(limit=3, period=60, key="tenant"))
def throttled(tenant: str, n: int = 0) -> None: ...


@app.task
def plain(n: int = 0) -> None: ...


class Doc(BaseModel):
    model: str
    n: int = 0


@app.task(batch=Batch(size=3, wait=30, key="model"))
def embed_batch(docs: list[Doc]) -> list[int]:
    return [d.n for d in docs]


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
    conn.execute("DELETE FROM pgqueue.throttle_windows")


def claim(conn: Conn, n: int = 10) -> list[int]:
    rows = conn.execute("SELECT id FROM pgqueue.claim(%s, %s, %s, 30)", (uuid.uuid4(), ["default"], n)).fetchall()
    return sorted(row[0] for row in rows)


def make_due(conn: Conn, ids: list[int]) -> None:
    """Move runs to now (instead of waiting for their time), as a test clock would."""
    conn.execute("UPDATE pgqueue.ready SET run_at = now() WHERE run_id = ANY(%s)", (ids,))
    conn.execute("UPDATE pgqueue.runs SET run_at = now() WHERE id = ANY(%s)", (ids,))


def active(conn: Conn, task: str) -> list[tuple[Any, ...]]:
    return conn.execute("SELECT id, control_key, status, input FROM pgqueue.runs WHERE task = %s"
                        " AND status IN ('queued', 'running') ORDER BY id", (task,)).fetchall()


def in_threads(count: int, work: Callable[[int], None]) -> None:
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            work(i)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def waits_on_a_lock(conn: Conn, pid: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while conn.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone() != ("Lock",):
        assert time.monotonic() < deadline, "the other connection never waited for the lock"
        time.sleep(0.02)


# -- debounce ----------------------------------------------------------------------------------

def test_debounce_runs_once_with_the_last_input_window_after_the_last_enqueue(conn: Conn) -> None:
    handles = [embed.enqueue(doc_id="d1", text=f"edit {i}") for i in range(5)]
    other = embed.enqueue(doc_id="d2", text="other")
    assert {h.id for h in handles} == {handles[0].id} and other.id != handles[0].id
    assert [h.created for h in handles] == [True, False, False, False, False]
    [(run_id, key, status, data), _] = active(conn, "embed")
    assert (run_id, key, status, data["text"]) == (handles[0].id, "d1", "queued", "edit 4")
    # window after the last enqueue (each enqueue here is its own transaction)
    lag = conn.execute("SELECT extract(epoch FROM q.run_at - now()) FROM pgqueue.ready q WHERE q.run_id = %s",
                       (run_id,)).fetchone()
    assert lag is not None and 25 < lag[0] <= 30
    assert claim(conn) == []  # not due yet


def test_debounce_never_waits_longer_than_max_wait_after_the_first_enqueue(conn: Conn) -> None:
    first = embed.enqueue(doc_id="slow", text="a")
    # the burst started 290 s ago: the next enqueue may push the start 10 s away, not 30
    conn.execute("UPDATE pgqueue.runs SET created_at = now() - interval '290 seconds' WHERE id = %s", (first.id,))
    again = embed.enqueue(doc_id="slow", text="b")
    assert again.id == first.id
    lag = conn.execute("SELECT extract(epoch FROM r.run_at - now()), extract(epoch FROM q.run_at - r.run_at)"
                       " FROM pgqueue.runs r JOIN pgqueue.ready q ON q.run_id = r.id WHERE r.id = %s",
                       (first.id,)).fetchone()
    assert lag is not None and 5 < lag[0] <= 10 and lag[1] == 0


def test_an_enqueue_after_the_run_started_makes_a_new_run(conn: Conn) -> None:
    first = embed_now.enqueue(doc_id="s", text="a")
    assert claim(conn) == [first.id]
    second = embed_now.enqueue(doc_id="s", text="b")
    assert second.created and second.id != first.id


def test_debounce_racing_a_claim_step_by_step(dsn: str, conn: Conn) -> None:
    """A claim holding the run's `ready` row makes a concurrent enqueue wait, then start anew;
    an enqueue holding it makes a claim skip the run, which then starts with the last input."""
    first = embed_now.enqueue(doc_id="race", text="a")
    with psycopg.connect(dsn) as claimer, psycopg.connect(dsn) as enqueuer:
        assert claim(claimer) == [first.id]  # claimed, not committed
        pid = enqueuer.info.backend_pid
        result: list[tuple[Any, ...]] = []
        t = threading.Thread(target=lambda: result.append(enqueuer.execute(
            "SELECT id, created FROM pgqueue.enqueue_one('embed_now', '{\"doc_id\": \"race\", \"text\": \"b\"}')"
        ).fetchone() or ()))
        t.start()
        waits_on_a_lock(conn, pid)
        claimer.commit()
        t.join()
        enqueuer.commit()
        [(new_id, created)] = result
        assert created and new_id != first.id

        third = enqueuer.execute("SELECT id, created FROM pgqueue.enqueue_one('embed_now',"
                                 " '{\"doc_id\": \"race\", \"text\": \"c\"}')").fetchone()
        assert third == (new_id, False)  # merged, not committed: the row stays locked
        assert claim(claimer) == []       # skipped, never waited for
        claimer.commit()
        enqueuer.commit()
    assert claim(conn) == [new_id]
    assert conn.execute("SELECT input->>'text' FROM pgqueue.runs WHERE id = %s", (new_id,)).fetchone() == ("c",)


def test_debounce_under_concurrent_enqueues_from_many_connections(dsn: str, conn: Conn) -> None:
    created: list[int] = []
    ids: set[int] = set()

    def enqueuer(i: int) -> None:
        with psycopg.connect(dsn, autocommit=True) as c:
            for n in range(25):
                row = c.execute("SELECT id, created FROM pgqueue.enqueue_one('embed', %s::jsonb)",
                                (f'{{"doc_id": "k{n % 3}", "text": "t{i}-{n}"}}',)).fetchone()
                assert row is not None
                ids.add(row[0])
                if row[1]:
                    created.append(row[0])

    in_threads(8, enqueuer)
    runs = active(conn, "embed")
    assert len(runs) == 3 and sorted(created) == sorted(ids) == [r[0] for r in runs]
    assert sorted(r[1] for r in runs) == ["k0", "k1", "k2"]


def test_enqueue_many_debounces_within_the_bulk(conn: Conn) -> None:
    handles = embed.enqueue_many([{"doc_id": "bulk", "text": f"v{i}"} for i in range(5)] + [{"doc_id": "b2"}])
    assert len({h.id for h in handles[:5]}) == 1 and handles[5].id != handles[0].id
    assert [h.created for h in handles] == [True, False, False, False, False, True]
    assert active(conn, "embed")[0][3]["text"] == "v4"


def test_plain_sql_enqueues_debounce_too_and_a_missing_key_is_refused(conn: Conn) -> None:
    a = conn.execute("SELECT pgqueue.enqueue('embed', '{\"doc_id\": \"sql\", \"text\": \"1\"}')").fetchone()
    b = conn.execute("SELECT pgqueue.enqueue('embed', '{\"doc_id\": \"sql\", \"text\": \"2\"}')").fetchone()
    assert a == b
    with pytest.raises(psycopg.Error, match='has no field "doc_id" \\(its debounce key\\)'):
        conn.execute("SELECT pgqueue.enqueue('embed', '{\"text\": \"x\"}')")
    with pytest.raises(InvalidInput, match='has no field "doc_id" \\(its debounce key\\)'):
        embed_optional.enqueue()  # the model allows it; the key needs it
    assert len(active(conn, "embed")) == 1 and active(conn, "embed_optional") == []  # nothing else written


# -- singleton ---------------------------------------------------------------------------------

def test_singleton_skip_returns_the_active_run_until_it_finishes(conn: Conn) -> None:
    first = index_once.enqueue(doc_id="s1", n=1)
    again = index_once.enqueue(doc_id="s1", n=2)
    assert (again.id, again.created) == (first.id, False)
    assert claim(conn) == [first.id]
    assert index_once.enqueue(doc_id="s1", n=3).id == first.id  # running: still the one
    assert index_once.enqueue(doc_id="s2").id != first.id
    conn.execute("UPDATE pgqueue.runs SET status = 'succeeded', finished_at = now() WHERE id = %s", (first.id,))
    later = index_once.enqueue(doc_id="s1", n=4)
    assert later.created and later.id != first.id


def test_singleton_replace_cancels_a_queued_run_and_waits_for_a_running_one(conn: Conn) -> None:
    first = index_latest.enqueue(doc_id="r", n=1)
    second = index_latest.enqueue(doc_id="r", n=2)
    assert second.created and second.id != first.id
    assert conn.execute("SELECT status, error->>'type' FROM pgqueue.runs WHERE id = %s",
                        (first.id,)).fetchone() == ("cancelled", "Replaced")
    assert claim(conn) == [second.id]
    third = index_latest.enqueue(doc_id="r", n=3)
    assert conn.execute("SELECT status, cancel_requested FROM pgqueue.runs WHERE id = %s",
                        (second.id,)).fetchone() == ("running", True)
    assert claim(conn) == []  # the replaced run is still stopping: the new one waits
    make_due(conn, [third.id])
    assert claim(conn) == []
    conn.execute("UPDATE pgqueue.runs SET status = 'cancelled', finished_at = now() WHERE id = %s", (second.id,))
    make_due(conn, [third.id])
    assert claim(conn) == [third.id]


def test_singleton_replace_racing_a_claim_step_by_step(dsn: str, conn: Conn) -> None:
    """A replace waits for a claim that holds the old run (locks taken in the claim's order, so no
    deadlock), then asks the now running run to stop."""
    old = index_latest.enqueue(doc_id="step", n=1)
    with psycopg.connect(dsn) as claimer, psycopg.connect(dsn) as enqueuer:
        assert claim(claimer) == [old.id]  # not committed: holds the old run's `ready` row
        result: list[tuple[Any, ...]] = []
        t = threading.Thread(target=lambda: result.append(enqueuer.execute(
            "SELECT id, created FROM pgqueue.enqueue_one('index_latest', '{\"doc_id\": \"step\", \"n\": 2}')"
        ).fetchone() or ()))
        t.start()
        waits_on_a_lock(conn, enqueuer.info.backend_pid)
        claimer.commit()
        t.join()
        enqueuer.commit()
    [(new_id, created)] = result
    assert created and new_id != old.id
    assert conn.execute("SELECT status, cancel_requested FROM pgqueue.runs WHERE id = %s",
                        (old.id,)).fetchone() == ("running", True)


def test_singleton_under_concurrent_enqueues_from_many_connections(dsn: str, conn: Conn) -> None:
    seen: list[tuple[str, int, bool]] = []

    def enqueuer(i: int) -> None:
        with psycopg.connect(dsn, autocommit=True) as c:
            for n in range(20):
                for task in ("index_once", "index_latest"):
                    row = c.execute("SELECT id, created FROM pgqueue.enqueue_one(%s, %s::jsonb)",
                                    (task, f'{{"doc_id": "k{n % 2}", "n": {n}}}')).fetchone()
                    assert row is not None
                    seen.append((task, row[0], row[1]))

    in_threads(8, enqueuer)
    once = active(conn, "index_once")
    assert sorted(r[1] for r in once) == ["k0", "k1"]
    assert sorted(i for t, i, c in seen if t == "index_once" and c) == [r[0] for r in once]
    latest = active(conn, "index_latest")
    assert sorted(r[1] for r in latest) == ["k0", "k1"]
    # every other run of index_latest was replaced (cancelled), one per enqueue but the last per key
    cancelled = conn.execute("SELECT count(*) FROM pgqueue.runs WHERE task = 'index_latest'"
                             " AND control_key IN ('k0', 'k1') AND status = 'cancelled'").fetchone()
    assert cancelled == (8 * 20 - 2,)


def test_singleton_replace_does_not_apply_to_a_child_spawn(conn: Conn) -> None:
    parent = plain.enqueue()
    with pytest.raises(psycopg.Error, match="cannot be spawned as a child run"):
        conn.execute("SELECT * FROM pgqueue.enqueue_many('index_once', ARRAY['{\"doc_id\": \"c\"}'::jsonb],"
                     " parent_id => %s)", (parent.id,))


# -- throttle ----------------------------------------------------------------------------------

def test_throttle_starts_at_most_limit_per_period_per_key_and_defers_the_rest(conn: Conn) -> None:
    a = [h.id for h in throttled.enqueue_many([{"tenant": "a", "n": i} for i in range(6)])]
    b = [h.id for h in throttled.enqueue_many([{"tenant": "b", "n": i} for i in range(2)])]
    got = claim(conn, 20)
    assert got == sorted(a[:3] + b)
    deferred = conn.execute("SELECT min(extract(epoch FROM run_at - now())), count(*) FROM pgqueue.ready"
                            " WHERE run_id = ANY(%s)", (a[3:],)).fetchone()
    assert deferred is not None and 59 < deferred[0] <= 60 and deferred[1] == 3
    assert conn.execute("SELECT count(*) FROM pgqueue.runs WHERE id = ANY(%s) AND status = 'queued'"
                        " AND attempt = 0", (a[3:],)).fetchone() == (3,)  # waiting, not failed
    make_due(conn, a[3:])
    assert claim(conn, 20) == []  # still three starts in the last minute
    # the window slides: the starts are now 61 s old
    conn.execute("UPDATE pgqueue.throttle_windows SET starts = ARRAY(SELECT s - interval '61 seconds'"
                 " FROM unnest(starts) s) WHERE key = 'a'")
    make_due(conn, a[3:])
    assert claim(conn, 20) == a[3:]


def test_two_claimers_of_a_throttled_key_step_by_step(dsn: str, conn: Conn) -> None:
    ids = [h.id for h in throttled.enqueue_many([{"tenant": "race", "n": i} for i in range(6)])]
    with psycopg.connect(dsn) as first, psycopg.connect(dsn) as second:
        got_first = claim(first, 2)        # holds the key's window, not committed
        assert len(got_first) == 2
        result: list[list[int]] = []
        t = threading.Thread(target=lambda: result.append(claim(second, 10)))
        t.start()
        waits_on_a_lock(conn, second.info.backend_pid)
        first.commit()
        t.join()
        second.commit()
    assert len(result[0]) == 1 and not set(result[0]) & set(got_first)
    assert set(got_first + result[0]) <= set(ids)


def test_throttle_under_many_connections_claiming_at_once(dsn: str, conn: Conn) -> None:
    throttled.enqueue_many([{"tenant": f"t{i % 4}", "n": i} for i in range(200)])

    def claimer(i: int) -> None:
        with psycopg.connect(dsn, autocommit=True) as c:
            for _ in range(10):
                claim(c, 3)

    in_threads(8, claimer)
    started = dict(conn.execute("SELECT throttle_key, count(*) FROM pgqueue.runs WHERE task = 'throttled'"
                                " AND status = 'running' GROUP BY 1").fetchall())
    assert started == {"t0": 3, "t1": 3, "t2": 3, "t3": 3}


def test_tasks_without_control_are_untouched(conn: Conn) -> None:
    handles = [plain.enqueue(n=1) for _ in range(3)]
    assert len({h.id for h in handles}) == 3
    assert conn.execute("SELECT count(*) FROM pgqueue.runs WHERE id = ANY(%s) AND control_key IS NULL"
                        " AND throttle_key IS NULL", ([h.id for h in handles],)).fetchone() == (3,)
    assert claim(conn) == sorted(h.id for h in handles)


# -- batch -------------------------------------------------------------------------------------

def due_in(conn: Conn, ids: list[int]) -> list[float]:
    rows = conn.execute("SELECT extract(epoch FROM q.run_at - now()) FROM pgqueue.ready q"
                        " JOIN unnest(%s::bigint[]) WITH ORDINALITY u(id, n) ON u.id = q.run_id ORDER BY u.n",
                        (ids,)).fetchall()
    return [float(row[0]) for row in rows]


def test_a_batch_waits_for_its_size_or_its_wait_and_the_claim_gathers_it(conn: Conn) -> None:
    [a1] = embed_batch.enqueue_many([Doc(model="m", n=1)])
    other = embed_batch.enqueue_many([Doc(model="other", n=9)])
    assert all(25 < d <= 30 for d in due_in(conn, [a1.id, other[0].id]))
    [a2] = embed_batch.enqueue_many([Doc(model="m", n=2)])
    assert due_in(conn, [a2.id])[0] == pytest.approx(due_in(conn, [a1.id])[0], abs=0.01)  # the batch's time
    assert claim(conn) == []
    [a3] = embed_batch.enqueue_many([Doc(model="m", n=3)])  # fills it: the whole batch is due
    assert all(d <= 0 for d in due_in(conn, [a1.id, a2.id, a3.id]))
    assert claim(conn) == [a1.id]  # the leader; the other items are set aside for it, still queued
    assert conn.execute("SELECT array_agg(id ORDER BY id), array_agg(DISTINCT status), array_agg(DISTINCT batch_id)"
                        " FROM pgqueue.runs WHERE batch_id IS NOT NULL AND task = 'embed_batch'"
                        " AND status = 'queued'").fetchone() == ([a2.id, a3.id], ["queued"], [a1.id])
    assert all(500 < d <= 600 for d in due_in(conn, [a2.id, a3.id]))
    # the other key's batch started its wait on its own; once due, its single item is claimed alone
    make_due(conn, [other[0].id])
    assert claim(conn) == [other[0].id]


def test_a_due_leader_gathers_the_items_of_its_key_that_are_not_due_yet(conn: Conn) -> None:
    items = embed_batch.enqueue_many([Doc(model="w", n=i) for i in range(2)])
    make_due(conn, [items[0].id])  # its wait is over
    assert claim(conn) == [items[0].id]
    assert conn.execute("SELECT batch_id FROM pgqueue.runs WHERE id = %s", (items[1].id,)).fetchone() == (items[0].id,)
    conn.execute("SELECT pg_sleep(0)")
    # handed back (its leader did not succeed): due at once, on its own
    conn.execute("WITH i AS (UPDATE pgqueue.runs SET batch_id = NULL, run_at = now() WHERE batch_id = %s"
                 " RETURNING id) UPDATE pgqueue.ready q SET run_at = now() FROM i WHERE q.run_id = i.id",
                 (items[0].id,))
    assert claim(conn) == [items[1].id]


def test_batches_under_concurrent_enqueues_and_claims(dsn: str, conn: Conn) -> None:
    def enqueuer(i: int) -> None:
        with psycopg.connect(dsn, autocommit=True) as c:
            for n in range(25):
                c.execute("SELECT pgqueue.enqueue('embed_batch', %s::jsonb)",
                          (f'{{"model": "c{n % 2}", "n": {i * 100 + n}}}',))

    in_threads(8, enqueuer)
    ids = [row[0] for row in conn.execute("SELECT id FROM pgqueue.runs WHERE task = 'embed_batch'"
                                          " AND control_key IN ('c0', 'c1') AND status = 'queued'").fetchall()]
    assert len(ids) == 200
    # 100 items per key, batches of 3: every item but the last of each key is due
    assert conn.execute("SELECT count(*) FROM pgqueue.ready WHERE run_id = ANY(%s) AND run_at <= now()",
                        (ids,)).fetchone() == (198,)
    leaders: list[int] = []

    def claimer(i: int) -> None:
        with psycopg.connect(dsn, autocommit=True) as c:
            for _ in range(15):
                leaders.extend(claim(c, 4))

    in_threads(6, claimer)
    while got := claim(conn, 10):  # whatever the concurrent claims left
        leaders.extend(got)
    parked = dict(conn.execute("SELECT id, batch_id FROM pgqueue.runs WHERE id = ANY(%s) AND batch_id IS NOT NULL",
                               (ids,)).fetchall())
    per_batch: dict[int, int] = {}
    for leader in parked.values():
        per_batch[leader] = per_batch.get(leader, 0) + 1
    assert len(set(leaders)) == len(leaders) and not set(leaders) & set(parked)  # each item in one batch
    assert set(per_batch) <= set(leaders) and max(per_batch.values()) <= 2       # at most size items
    waiting = [row[0] for row in conn.execute("SELECT run_id FROM pgqueue.ready WHERE run_id = ANY(%s)"
                                              " AND NOT run_id = ANY(%s)", (ids, list(parked))).fetchall()]
    assert sorted(leaders + list(parked) + waiting) == sorted(ids)
    assert len(waiting) <= 2  # at most the last, not yet due, item of each key
    assert sum(per_batch.values()) + len(leaders) >= 198


async def test_a_worker_calls_a_batch_once_and_each_handle_gets_its_own_result(dsn: str) -> None:
    calls: list[list[int]] = []
    worker_app = PgQueue(dsn)

    @worker_app.task(name="embed_worker", batch=Batch(size=4, wait=30, key="model"))
    async def embed_worker(docs: list[Doc]) -> list[str]:
        calls.append([d.n for d in docs])
        return [f"vector-{d.n}" for d in docs]

    @worker_app.task(name="embed_wrong", batch=Batch(size=3, wait=0), retry=Retry(max_attempts=1))
    async def embed_wrong(docs: list[Doc]) -> list[str]:
        return ["only one"]

    async with running_worker(worker_app):
        handles = await embed_worker.enqueue_many_async([Doc(model="m", n=i) for i in range(4)])
        results = [await h.result(timeout=30) for h in handles]
        wrong = await embed_wrong.enqueue_many_async([Doc(model="x", n=i) for i in range(3)])
        outcomes = [await h.wait(timeout=30) for h in wrong]
    await worker_app.aclose()
    assert results == ["vector-0", "vector-1", "vector-2", "vector-3"] and calls == [[0, 1, 2, 3]]
    # a wrong answer fails the leader; its other items are handed back and fail as leaders in turn
    # (a batch of one item that gets one result succeeds)
    assert sorted(str(o.status) for o in outcomes) == ["failed", "failed", "succeeded"]


# -- declarations --------------------------------------------------------------------------------

@pytest.mark.parametrize(("make", "message"), [
    (lambda: Debounce(key="doc", window=-1), "Debounce window must be a non-negative"),
    (lambda: Debounce(key="doc", window=30, max_wait=10), "max_wait .* must be >= window"),
    (lambda: Debounce(key=lambda d: d, window=1), "must be the name of an input field"),  # type: ignore[arg-type]
    (lambda: Singleton(key="doc", on_conflict="ignore"), "unknown Singleton on_conflict 'ignore'"),
    (lambda: Throttle(limit=0, period=60), "Throttle limit must be an integer >= 1"),
    (lambda: Throttle(limit=2, period=0), "Throttle period must be a positive"),
    (lambda: Batch(size=0, wait=5), "Batch size must be an integer >= 1"),
    (lambda: Batch(size=10, wait=-1), "Batch wait must be a non-negative"),
])
def test_bad_declarations_are_refused(make: Callable[[], object], message: str) -> None:
    with pytest.raises(TaskDefinitionError, match=message):
        make()


def test_debounce_and_singleton_together_are_refused() -> None:
    other = PgQueue("postgresql://unused")
    with pytest.raises(TaskDefinitionError, match="choose one"):
        other.task(debounce=Debounce(key="a", window=1), singleton=Singleton(key="a"))(lambda a: None)
    with pytest.raises(TaskDefinitionError, match=r"takes a pgqueue\.Throttle"):
        other.task(throttle=3)(lambda a: None)  # type: ignore[arg-type]
    with pytest.raises(TaskDefinitionError, match=r"batch= needs a function of one parameter typed list\[Model\]"):
        other.task(name="bad_batch", batch=Batch(size=2, wait=1))(lambda a: None)


# -- through a worker and the CLI ------------------------------------------------------------------

async def test_a_worker_runs_a_burst_of_debounced_enqueues_once_with_the_last_input(dsn: str) -> None:
    seen: list[str] = []
    worker_app = PgQueue(dsn)

    @worker_app.task(name="embed_burst", debounce=Debounce(key="doc_id", window=2))
    async def embed_burst(doc_id: str, text: str) -> str:
        seen.append(text)
        return text

    async with running_worker(worker_app):
        handles = [await embed_burst.enqueue_async(doc_id="w", text=f"v{i}") for i in range(5)]
        results = [await h.result(timeout=30) for h in handles]
    await worker_app.aclose()
    assert results == ["v4"] * 5 and seen == ["v4"]


def test_cli_lists_the_rules_and_enqueues_with_them(cli_env: dict[str, str], conn: Conn) -> None:
    from test_cli import assert_one_line_error, pgqueue

    listing = pgqueue("tasks", env=cli_env)
    assert listing.returncode == 0, listing.stderr
    line = next(row for row in listing.stdout.splitlines() if row.startswith("embed "))
    assert "debounce doc_id: window 30s, max wait 300s" in line
    assert "throttle tenant: 3 per 60s" in pgqueue("tasks", env=cli_env).stdout
    first = pgqueue("enqueue", "index_once", "--input", '{"doc_id": "cli"}', env=cli_env)
    second = pgqueue("enqueue", "index_once", "--input", '{"doc_id": "cli"}', env=cli_env)
    assert first.returncode == second.returncode == 0, (first.stderr, second.stderr)
    assert second.stdout.startswith(f"{first.stdout.strip()} (an existing run")
    assert_one_line_error(pgqueue("enqueue", "index_once", "--input", '{"n": 1}', env=cli_env),
                          'has no field "doc_id" (its singleton key)')
