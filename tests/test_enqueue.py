"""Enqueueing from Python: single, async, bulk, transactional, options, idempotency, bad input."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from conftest import bind
from pgqueue import InputTooLarge, InvalidInput, PgQueue
from sample_app import Document


@pytest.fixture
def tasks(app: PgQueue) -> Any:
    import sample_app

    # the sample tasks, bound to this test's database
    bind(sample_app.app, app.dsn)
    yield sample_app
    bind(sample_app.app, None)


def count_runs(conn: psycopg.Connection[Any], task: str) -> int:
    row = conn.execute("SELECT count(*) FROM pgqueue.runs WHERE task = %s", (task,)).fetchone()
    return int(row[0]) if row else 0


def test_enqueue_one_returns_a_handle_and_stores_the_run(tasks: Any, conn: psycopg.Connection[Any]) -> None:
    handle = tasks.summarize.enqueue(Document(doc_id=42, title="t"))
    info = handle.info()
    assert handle.created and info.id == handle.id
    assert (info.task, info.queue, info.priority, info.status) == ("summarize", "llm", 5, "queued")
    assert info.input == {"doc_id": 42, "title": "t"}
    ready = conn.execute("SELECT queue, priority FROM pgqueue.ready WHERE run_id = %s", (handle.id,)).fetchone()
    assert ready == ("llm", 5)


def test_plain_type_hints_store_arguments_by_name(tasks: Any) -> None:
    assert tasks.add.enqueue(2).info().input == {"a": 2, "b": 1}
    assert tasks.add.enqueue(a=3, b=4).info().input == {"a": 3, "b": 4}


async def test_enqueue_from_async_code(tasks: Any) -> None:
    handle = await tasks.summarize.enqueue_async(Document(doc_id=7))
    assert (await handle.info()).input["doc_id"] == 7
    handles = await tasks.add.enqueue_many_async([{"a": i} for i in range(3)])
    assert [(await h.info()).input["a"] for h in handles] == [0, 1, 2]
    await tasks.app.aclose()


def test_invalid_input_is_refused_and_nothing_is_written(tasks: Any, conn: psycopg.Connection[Any]) -> None:
    before = count_runs(conn, "add")
    with pytest.raises(InvalidInput, match=r"task 'add'.*a: Input should be a valid integer"):
        tasks.add.enqueue("not a number")
    with pytest.raises(InvalidInput, match="unexpected keyword argument"):
        tasks.add.enqueue(1, c=3)
    with pytest.raises(InvalidInput, match=r"\(item 2\).*a: Field required"):
        tasks.add.enqueue_many([{"a": 1}, {"a": 2}, {"b": 3}])
    with pytest.raises(InvalidInput, match="title: String should have at most 200 characters"):
        tasks.summarize.enqueue(Document.model_construct(doc_id=1, title="x" * 201))
    assert count_runs(conn, "add") == before


def test_input_over_the_size_limit_is_refused(app: PgQueue, dsn: str, conn: psycopg.Connection[Any]) -> None:
    big = {"text": "x" * 2_000_000}
    with pytest.raises(InputTooLarge, match=r"over the limit of 1048576 bytes.*pgqueue.settings"):
        app.enqueue("store", big, queue="default")
    # the limit is a setting of the database, in a table only the schema's owner can change
    conn.execute("UPDATE pgqueue.settings SET value = 100 WHERE name = 'max_input_bytes'")
    try:
        with pytest.raises(InputTooLarge, match="limit of 100 bytes"):
            app.enqueue("store", {"text": "y" * 200}, queue="default")
    finally:
        conn.execute("UPDATE pgqueue.settings SET value = 1048576 WHERE name = 'max_input_bytes'")
    assert count_runs(conn, "store") == 0


def test_bulk_enqueue_keeps_order_and_is_atomic(tasks: Any, conn: psycopg.Connection[Any]) -> None:
    seen: list[int] = []
    handles = tasks.add.enqueue_many(({"a": i} for i in range(12_000)), progress=seen.append)
    assert len(handles) == 12_000 and seen == [5000, 10000, 12000]
    ids = [h.id for h in handles]
    assert ids == sorted(ids)
    rows = conn.execute("SELECT id, (input->>'a')::int FROM pgqueue.runs WHERE id = ANY(%s) ORDER BY id",
                        (ids,)).fetchall()
    assert [a for _, a in rows] == list(range(12_000))
    # a failure in a later chunk rolls back the earlier chunks too
    before = count_runs(conn, "store")
    items = [{"n": i} for i in range(6000)] + [{"text": "x" * 2_000_000}]
    with pytest.raises(InputTooLarge, match="input #1000"):
        tasks.app.enqueue_many("store", items, queue="default")
    assert count_runs(conn, "store") == before


def test_transactional_enqueue_commits_and_rolls_back_with_the_application(
        tasks: Any, dsn: str, conn: psycopg.Connection[Any]) -> None:
    with psycopg.connect(dsn) as own:
        own.execute("CREATE TABLE IF NOT EXISTS orders (id int)")
        own.commit()
        with own.transaction():
            own.execute("INSERT INTO orders VALUES (1)")
            kept = tasks.add.options(connection=own).enqueue(1)
        try:
            with own.transaction():
                own.execute("INSERT INTO orders VALUES (2)")
                lost = tasks.add.options(connection=own).enqueue(2)
                raise RuntimeError("application error")
        except RuntimeError:
            pass
    ids = {row[0] for row in conn.execute("SELECT id FROM pgqueue.runs")}
    assert kept.id in ids and lost.id not in ids
    assert conn.execute("SELECT count(*) FROM pgqueue.ready WHERE run_id = %s", (lost.id,)).fetchone() == (0,)


async def test_transactional_enqueue_async(tasks: Any, dsn: str, conn: psycopg.Connection[Any]) -> None:
    async with await psycopg.AsyncConnection.connect(dsn) as own:
        async with own.transaction():
            kept = await tasks.add.options(connection=own).enqueue_async(5)
        with pytest.raises(ZeroDivisionError):
            async with own.transaction():
                lost = await tasks.add.options(connection=own).enqueue_async(6)
                1 / 0  # noqa: B018
    ids = {row[0] for row in conn.execute("SELECT id FROM pgqueue.runs")}
    assert kept.id in ids and lost.id not in ids
    await tasks.app.aclose()


def test_options_are_stored(tasks: Any) -> None:
    at = datetime(2030, 1, 1, tzinfo=UTC)
    info = tasks.add.options(run_at=at, priority=-3, queue="batch", tags=["nightly"],
                             metadata={"tenant": "acme"}).enqueue(1).info()
    assert (info.run_at, info.priority, info.queue, info.tags, info.metadata) == (
        at, -3, "batch", ["nightly"], {"tenant": "acme"})
    delayed = tasks.add.options(delay=timedelta(hours=1)).enqueue(1).info()
    assert timedelta(minutes=59) < delayed.run_at - delayed.created_at <= timedelta(hours=1, seconds=1)
    with pytest.raises(Exception, match="timezone-aware"):
        tasks.add.options(run_at=datetime(2030, 1, 1)).enqueue(1)


def test_idempotency_key_returns_the_existing_run(tasks: Any, conn: psycopg.Connection[Any]) -> None:
    first = tasks.add.options(idempotency_key="order-1").enqueue(1)
    second = tasks.add.options(idempotency_key="order-1").enqueue(99)
    assert first.created and not second.created and second.id == first.id
    assert second.info().input == {"a": 1, "b": 1}
    handles = tasks.add.enqueue_many([{"a": 1}, {"a": 2}, {"a": 3}], idempotency_keys=["order-1", "k2", "k2"])
    assert handles[0].id == first.id and handles[1].id == handles[2].id
    assert [h.created for h in handles] == [False, True, False]


def test_concurrent_enqueues_with_one_key_make_one_run(dsn: str, conn: psycopg.Connection[Any]) -> None:
    workers = 8
    barrier = threading.Barrier(workers)
    ids: list[int] = []

    def enqueue_in_own_transaction(i: int) -> None:
        with psycopg.connect(dsn) as own:
            app = PgQueue(dsn)
            barrier.wait()
            with own.transaction():
                handle = app.enqueue("charge", {"i": i}, idempotency_key="payment-77", connection=own,
                                     queue="default")
            ids.append(handle.id)

    threads = [threading.Thread(target=enqueue_in_own_transaction, args=(i,)) for i in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ids) == workers and len(set(ids)) == 1
    assert count_runs(conn, "charge") == 1


def test_one_notification_per_statement(app: PgQueue, dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as listener:
        listener.execute("LISTEN pgqueue_ready")
        app.enqueue_many("bulk", [{"i": i} for i in range(3000)], queue="default")
        app.enqueue("later", {}, delay=60, queue="default")  # not due: no wake-up
        got = list(listener.notifies(timeout=0.5))
    assert [(n.channel, n.payload) for n in got] == [("pgqueue_ready", "default")]


def test_enqueue_by_name_of_a_task_defined_elsewhere(app: PgQueue, conn: psycopg.Connection[Any]) -> None:
    conn.execute("INSERT INTO pgqueue.tasks (name, queue, priority) VALUES ('remote.embed', 'gpu', 9)")
    info = app.enqueue("remote.embed", {"doc": 1}).info()
    assert (info.queue, info.priority) == ("gpu", 9)
    with pytest.raises(InvalidInput, match="not a JSON object"):
        app.enqueue_many("remote.embed", [[1, 2]])  # type: ignore[list-item]


def test_enqueue_survives_a_pooled_connection_the_server_just_ended(app: PgQueue, dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as admin:
        for _ in range(5):
            pool = app.db.pool()
            with pool.connection(), pool.connection(), pool.connection():
                pass  # the pool now holds several idle connections, all about to be ended
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                          " WHERE datname = current_database() AND pid <> pg_backend_pid()")
            # at once: the termination notice may not have reached the client yet
            assert app.enqueue("after_kill", {}, queue="default").created
            assert len(app.enqueue_many("after_kill", [{}, {}], queue="default")) == 2
