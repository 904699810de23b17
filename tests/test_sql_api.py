"""The SQL API: enqueue from psql, triggers or any language."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest


@pytest.fixture(autouse=True)
def registered(conn: psycopg.Connection[Any]) -> None:
    """The tasks these tests enqueue by name, registered as a worker would (defaults: queue 'default')."""
    conn.execute("INSERT INTO pgqueue.tasks (name) VALUES ('summarize'), ('report'), ('t'), ('embed') "
                 "ON CONFLICT DO NOTHING")


def test_enqueue_from_sql_returns_the_run_id(conn: psycopg.Connection[Any]) -> None:
    (run_id,) = conn.execute("SELECT pgqueue.enqueue('summarize', '{\"doc_id\": 1}')").fetchone()  # type: ignore[misc]
    row = conn.execute("SELECT task, queue, priority, status, input FROM pgqueue.runs WHERE id = %s",
                       (run_id,)).fetchone()
    assert row == ("summarize", "default", 0, "queued", {"doc_id": 1})


def test_named_options(conn: psycopg.Connection[Any]) -> None:
    (run_id,) = conn.execute(
        """SELECT pgqueue.enqueue('report', '{}', queue => 'batch', priority => 7,
                                  delay => interval '10 minutes', tags => ARRAY['weekly'],
                                  metadata => '{"team": "data"}', idempotency_key => 'week-48')"""
    ).fetchone()  # type: ignore[misc]
    row = conn.execute(
        """SELECT queue, priority, run_at - created_at, tags, metadata, idempotency_key
             FROM pgqueue.runs WHERE id = %s""", (run_id,)).fetchone()
    assert row is not None
    assert row[0:2] == ("batch", 7) and row[2].total_seconds() == pytest.approx(600, abs=1)
    assert row[3:] == (["weekly"], {"team": "data"}, "week-48")
    (again,) = conn.execute(
        "SELECT pgqueue.enqueue('report', '{}', idempotency_key => 'week-48')").fetchone()  # type: ignore[misc]
    assert again == run_id


def test_registered_task_defaults_apply(conn: psycopg.Connection[Any]) -> None:
    conn.execute("INSERT INTO pgqueue.tasks (name, queue, priority) VALUES ('embed_gpu', 'gpu', 3)")
    (run_id,) = conn.execute("SELECT pgqueue.enqueue('embed_gpu')").fetchone()  # type: ignore[misc]
    assert conn.execute("SELECT queue, priority FROM pgqueue.runs WHERE id = %s",
                        (run_id,)).fetchone() == ("gpu", 3)


def test_enqueue_many_from_sql(conn: psycopg.Connection[Any]) -> None:
    rows = conn.execute(
        "SELECT id, created FROM pgqueue.enqueue_many('embed', ARRAY['{\"n\":1}', '{\"n\":2}']::jsonb[])"
    ).fetchall()
    assert len(rows) == 2 and all(created for _, created in rows)


def test_trigger_can_enqueue(conn: psycopg.Connection[Any]) -> None:
    conn.execute("""
        CREATE TABLE documents (id int PRIMARY KEY, body text);
        CREATE FUNCTION enqueue_embedding() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pgqueue.enqueue('embed', jsonb_build_object('doc_id', NEW.id));
            RETURN NEW;
        END $$;
        CREATE TRIGGER documents_embed AFTER INSERT ON documents
            FOR EACH ROW EXECUTE FUNCTION enqueue_embedding();
    """)
    conn.execute("INSERT INTO documents VALUES (41, 'a'), (42, 'b')")
    inputs = conn.execute("SELECT input FROM pgqueue.runs WHERE input ? 'doc_id' ORDER BY id").fetchall()
    assert inputs[-2:] == [({"doc_id": 41},), ({"doc_id": 42},)]


@pytest.mark.parametrize(("call", "message"), [
    ("pgqueue.enqueue('t', '[1, 2]')", 'input #0 of task "t" is not a JSON object'),
    ("pgqueue.enqueue('', '{}')", "task name is empty"),
    ("pgqueue.enqueue('t', '{}', priority => 40000)", "priority 40000 is out of range"),
    ("pgqueue.enqueue_many('t', ARRAY['{}']::jsonb[], idempotency_keys => ARRAY['a', 'b'])",
     "2 idempotency keys for 1 inputs"),
])
def test_bad_input_from_sql_is_refused(conn: psycopg.Connection[Any], call: str, message: str) -> None:
    (before,) = conn.execute("SELECT count(*) FROM pgqueue.runs").fetchone()  # type: ignore[misc]
    with pytest.raises(psycopg.Error, match=message):
        conn.execute(f"SELECT {call}")  # type: ignore[arg-type]
    assert conn.execute("SELECT count(*) FROM pgqueue.runs").fetchone() == (before,)
