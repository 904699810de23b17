"""Least privilege: a database owned by a non-superuser (it runs migrate and sql/roles.sql), and
the producer, worker and reader roles, each checked for what it may do and what it is refused.
The worker role running the whole core (through PgBouncer) is in test_pgbouncer.py."""

from __future__ import annotations

import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from test_dashboard import request
from topology import least_privilege_database

from pgqueue import PgQueue, RunStatus
from pgqueue.dashboard import create_server
from pgqueue.errors import MigrationFailed
from pgqueue.migrations import apply_roles, check_schema, migrate
from pgqueue.sqlfiles import roles_sql
from pgqueue.testing import TestServer

REFUSED = psycopg.errors.InsufficientPrivilege


@pytest.fixture(scope="module")
def roles(pg_server: TestServer) -> Iterator[dict[str, str]]:
    name = f"t_roles_{uuid.uuid4().hex[:8]}"
    dsns = least_privilege_database(pg_server.admin_dsn, pg_server.dsn_for, name)
    yield dsns
    pg_server.drop_database(dsns["admin"])


def refused(dsn: str, statement: str, params: Any = None) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn, pytest.raises(REFUSED):
        conn.execute(statement, params)


def test_migrate_and_roles_need_no_superuser(roles: dict[str, str]) -> None:
    with psycopg.connect(roles["owner"]) as conn:
        assert conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone() == (False,)
    assert migrate(roles["owner"]) == []
    apply_roles(roles["owner"])  # again: idempotent
    for kind in ("producer", "worker", "reader"):
        check_schema(roles[kind])


def test_only_the_owner_migrates(roles: dict[str, str]) -> None:
    for kind in ("producer", "worker", "reader"):
        with pytest.raises(MigrationFailed, match=r"permission denied for database.*as the database's owner"):
            migrate(roles[kind])
        refused(roles[kind], "CREATE TABLE pgqueue.intruder (a int)")
        with pytest.raises(MigrationFailed, match="must be owner of schema pgqueue"):
            apply_roles(roles[kind])


def test_roles_command(roles: dict[str, str], cli_env: dict[str, str]) -> None:
    def pgqueue(dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "pgqueue_cli", *args], capture_output=True, text=True,
                              env={**cli_env, "PGQUEUE_DSN": dsn}, timeout=60)

    printed = pgqueue(roles["reader"], "roles", "--print")
    assert printed.returncode == 0 and printed.stdout == roles_sql()
    denied = pgqueue(roles["worker"], "roles")
    assert denied.returncode == 1 and "must be owner of schema pgqueue (pgq_owner)" in denied.stderr, denied
    assert "Traceback" not in denied.stderr
    done = pgqueue(roles["owner"], "roles")
    assert done.returncode == 0 and "pgqueue_producer, pgqueue_worker, pgqueue_reader granted" in done.stdout, done
    refused_migrate = pgqueue(roles["producer"], "migrate")
    assert refused_migrate.returncode == 1 and "as the database's owner" in refused_migrate.stderr, refused_migrate


def test_producer_enqueues_and_reads_only(roles: dict[str, str]) -> None:
    with PgQueue(roles["producer"]) as producer:
        handle = producer.enqueue("somewhere.else", {"n": 1}, queue="default")
        assert handle.info().status == RunStatus.QUEUED
        handles = producer.enqueue_many("somewhere.else", [{"n": 2}, {"n": 3}], queue="default")
        assert handles[1].status() == RunStatus.QUEUED
        with pytest.raises(REFUSED):
            producer.cancel(handle.id)
        with pytest.raises(REFUSED):
            producer.send_event("anything", "k", {})
    p = roles["producer"]
    refused(p, "SELECT * FROM pgqueue.claim(gen_random_uuid(), ARRAY['default'], 10, 30)")
    refused(p, "UPDATE pgqueue.runs SET priority = 0 WHERE id = %s", (handle.id,))
    refused(p, "DELETE FROM pgqueue.runs WHERE id = %s", (handle.id,))
    refused(p, "DELETE FROM pgqueue.ready")
    refused(p, "SELECT * FROM pgqueue.workers")
    refused(p, "INSERT INTO pgqueue.tasks (name, queue) VALUES ('evil', 'default')")
    # the worker role may change runs; the run is still there, queued
    with psycopg.connect(roles["worker"], autocommit=True) as conn:
        assert conn.execute("SELECT status FROM pgqueue.runs WHERE id = %s", (handle.id,)).fetchone() == ("queued",)


def test_reader_sees_the_dashboard_and_changes_nothing(roles: dict[str, str]) -> None:
    with PgQueue(roles["producer"]) as producer:
        run = producer.enqueue("somewhere.else", {"n": 1}, queue="default")
    server = create_server(roles["reader"], "127.0.0.1", 0, None)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        for path in ("/", "/runs", f"/runs/{run.id}", "/workers", "/cron", "/limits"):
            status, _, body = request(server, "GET", path)
            assert status == 200, (path, body[:500])
    finally:
        server.shutdown()
        server.dash.app.close()
    r = roles["reader"]
    refused(r, "SELECT pgqueue.cancel_run(%s)", (run.id,))
    refused(r, "SELECT pgqueue.pause_queue('default')")
    refused(r, "SELECT * FROM pgqueue.enqueue('x', '{}', queue => 'default')")
    refused(r, "UPDATE pgqueue.runs SET priority = 0")
    refused(r, "DELETE FROM pgqueue.runs")
    with psycopg.connect(r) as conn:
        assert conn.execute("SELECT status FROM pgqueue.runs WHERE id = %s", (run.id,)).fetchone() == ("queued",)


def test_producer_enqueues_keyed_runs_and_session_invocations_and_reads_states(roles: dict[str, str]) -> None:
    with psycopg.connect(roles["owner"], autocommit=True) as conn:
        conn.execute("INSERT INTO pgqueue.tasks (name, queue, concurrency_key_field) "
                     "VALUES ('keyed', 'default', 'k'), ('talk', 'default', 'user_id')")
        conn.execute("INSERT INTO pgqueue.sessions (name, key_field) VALUES ('talk', 'user_id')")
    p = roles["producer"]
    with psycopg.connect(p, autocommit=True) as conn:
        conn.execute("SELECT pgqueue.enqueue('keyed', '{\"k\": \"a\"}')")
        first, second = (conn.execute("SELECT pgqueue.enqueue('talk', '{\"user_id\": \"u\"}')").fetchone()
                         for _ in range(2))
        assert conn.execute("SELECT pgqueue.session_state('talk', 'u')").fetchone() == ({},)
    with psycopg.connect(roles["worker"], autocommit=True) as conn:
        assert conn.execute("SELECT active_run FROM pgqueue.session_keys WHERE key = 'u'").fetchone() == first
        assert conn.execute("SELECT run_id FROM pgqueue.session_inbox").fetchone() == second
    # reading a state is allowed, writing one or the inbox is not
    refused(p, "UPDATE pgqueue.session_keys SET state = '{}'")
    refused(p, "DELETE FROM pgqueue.session_inbox")
