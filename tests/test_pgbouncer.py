"""pgqueue through PgBouncer in transaction pooling mode (a real `pgbouncer` process).

A transaction pooler hands each transaction to whichever server connection is free, so nothing
of a session survives from one transaction to the next: statements prepared on the server
(psycopg prepares a statement run 5 times; pgqueue prepares its named queries), LISTEN, session
advisory locks and SET. pgqueue keeps no session state with PGQUEUE_PREPARED_STATEMENTS=off, and
listens on PGQUEUE_LISTEN_DSN (straight to PostgreSQL) or polls when it is `off`.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest
import topology_app
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from topology import LOGINS, OWNER, PgBouncer, least_privilege_database, owned_database
from topology_core import exercise_core

from conftest import bind
from pgqueue import PgQueue
from pgqueue.config import connection_kwargs
from pgqueue.database import Database
from pgqueue.errors import ConfigurationError
from pgqueue.migrations import check_schema, migrate
from pgqueue.runs import get_run_op
from pgqueue.sqlfiles import migrations
from pgqueue.testing import TestServer
from processes import FAST, Workers


@pytest.fixture(scope="module")
def roles(pg_server: TestServer) -> Iterator[dict[str, str]]:
    """Every connection of these tests is a non-superuser's: the owner, producer and worker."""
    dsns = least_privilege_database(pg_server.admin_dsn, pg_server.dsn_for, f"t_bouncer_{uuid.uuid4().hex[:8]}")
    with psycopg.connect(dsns["admin"], autocommit=True) as conn:
        conn.execute(topology_app.LOG_DDL)
        conn.execute("GRANT SELECT, INSERT ON topo_log TO pgqueue_worker")
    yield dsns
    pg_server.drop_database(dsns["admin"])


@pytest.fixture(scope="module")
def bouncer(pg_server: TestServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgBouncer]:
    params = conninfo_to_dict(pg_server.admin_dsn)
    proc = PgBouncer(tmp_path_factory.mktemp("pgbouncer"), int(params.get("port") or 5432),
                     users=[OWNER, *LOGINS.values()], pool_size=10)
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture
def off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGQUEUE_PREPARED_STATEMENTS", "off")


def test_a_statement_prepared_through_pgbouncer_is_missing_on_the_next_server_connection(
        bouncer: PgBouncer, roles: dict[str, str]) -> None:
    """Why prepared statements must be off: the second execution of a prepared statement meets
    another server connection when the first one is busy with another client's transaction."""
    through = bouncer.dsn_for(roles["reader"])
    with psycopg.connect(through, autocommit=True) as a, psycopg.connect(through, autocommit=True) as b:
        a.execute("SELECT %s::int", (1,), prepare=True)
        with b.transaction():
            b.execute("SELECT 1")  # b now holds the server connection a prepared on
            with pytest.raises(psycopg.errors.InvalidSqlStatementName):
                a.execute("SELECT %s::int", (2,), prepare=True)


def test_database_prepares_nothing_when_told_off(bouncer: PgBouncer, roles: dict[str, str], off: None) -> None:
    """The same interleaving, through a `Database` with PGQUEUE_PREPARED_STATEMENTS=off: its
    named queries (prepared otherwise) run on any server connection."""
    through = bouncer.dsn_for(roles["producer"])
    db = Database(through, pool_size=1)
    try:
        run = PgQueue(through).enqueue("nothing.here", {}, queue="default")
        with psycopg.connect(through, autocommit=True) as other:
            for _ in range(8):
                db.execute(get_run_op(run.id))
                with other.transaction():
                    other.execute("SELECT 1")
                    db.execute(get_run_op(run.id))
    finally:
        db.close()


def test_migrate_through_pgbouncer_concurrently(pg_server: TestServer, bouncer: PgBouncer, off: None) -> None:
    """As the database's owner (no superuser), three migrate runs at once through PgBouncer."""
    admin = owned_database(pg_server.admin_dsn, pg_server.dsn_for, f"t_bouncer_migrate_{uuid.uuid4().hex[:8]}")
    try:
        through = bouncer.dsn_for(make_conninfo(admin, user=OWNER))
        with ThreadPoolExecutor(3) as pool:
            results = list(pool.map(lambda _: migrate(through), range(3)))
        names = sorted(name for r in results for name in r)
        assert names == [f"{m.version:04d}_{m.name}" for m in migrations()]
        check_schema(through)
        assert migrate(through) == []
        # no session lock left behind on any server connection
        with psycopg.connect(admin) as conn:
            assert conn.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'").fetchone() == (0,)
    finally:
        pg_server.drop_database(admin)


@pytest.mark.parametrize("listen", ["direct", "off"])
def test_core_through_pgbouncer(bouncer: PgBouncer, roles: dict[str, str], off: None, tmp_path: Path,
                                listen: str) -> None:
    """A producer (pgqueue_producer) and two worker processes (pgqueue_worker), all through
    PgBouncer in transaction pooling mode; LISTEN straight to PostgreSQL, or off (polling)."""
    with psycopg.connect(roles["admin"], autocommit=True) as conn:
        conn.execute("TRUNCATE topo_log")
    worker_dsn = bouncer.dsn_for(roles["worker"])
    producer_listen = roles["producer"] if listen == "direct" else "off"
    bind(topology_app.app, bouncer.dsn_for(roles["producer"]))
    topology_app.app.db.listen_setting = producer_listen
    workers = Workers(worker_dsn, tmp_path, app="topology_app:app",
                      env={"PGQUEUE_PREPARED_STATEMENTS": "off",
                           "PGQUEUE_LISTEN_DSN": roles["worker"] if listen == "direct" else "off"})
    try:
        for _ in range(2):
            workers.start(*FAST, "--concurrency", "8")
        with PgQueue(worker_dsn) as events:
            exercise_core(topology_app, roles["admin"], events)
    finally:
        workers.stop_all()
        bind(topology_app.app, None)
        topology_app.app.db.listen_setting = None
    for i in range(2):
        log = workers.log_of(i)
        assert "Traceback" not in log and "prepared statement" not in log and "permission denied" not in log, log
        assert ("claims poll only" in log) == (listen == "off"), log


def test_settings_resolve_and_bad_values_say_what_to_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PGQUEUE_LISTEN_DSN", raising=False)
    assert Database("postgresql://u@db/app").listen_dsn == "postgresql://u@db/app"
    monkeypatch.setenv("PGQUEUE_LISTEN_DSN", "postgresql://u@direct/app")
    assert Database("postgresql://u@bouncer/app").listen_dsn == "postgresql://u@direct/app"
    assert Database("postgresql://u@bouncer/app", listen_dsn="OFF").listen_dsn is None
    with Database("postgresql://u@bouncer/app", listen_dsn="off").listen("pgqueue_ready") as conn:
        assert conn is None  # no connection at all: the caller polls
    monkeypatch.setenv("PGQUEUE_PREPARED_STATEMENTS", "maybe")
    with pytest.raises(ConfigurationError, match=r"PGQUEUE_PREPARED_STATEMENTS='maybe'.*off behind PgBouncer"):
        connection_kwargs("postgresql://u@db/app")
    monkeypatch.setenv("PGQUEUE_PREPARED_STATEMENTS", "off")
    assert connection_kwargs("postgresql://u@db/app")["prepare_threshold"] is None
    monkeypatch.setenv("PGQUEUE_PREPARED_STATEMENTS", "on")
    assert "prepare_threshold" not in connection_kwargs("postgresql://u@db/app")
