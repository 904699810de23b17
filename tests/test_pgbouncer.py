"""pgqueue through PgBouncer in transaction pooling mode (a real `pgbouncer` process).

A transaction pooler hands each transaction to whichever server connection is free, so nothing
of a session survives from one transaction to the next: statements prepared on the server
(psycopg prepares a statement run 5 times; pgqueue prepares its named queries), LISTEN, session
advisory locks and SET. pgqueue keeps no session state with PGQUEUE_PREPARED_STATEMENTS=off, and
listens on PGQUEUE_LISTEN_DSN (straight to PostgreSQL) or polls when it is `off`.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict
from topology import PgBouncer
from topology_core import exercise_core

from conftest import Server, bind
from pgqueue import PgQueue
from pgqueue.database import Database
from pgqueue.migrations import check_schema, migrate
from pgqueue.runs import get_run_op
from processes import FAST, Workers


@pytest.fixture(scope="module")
def bouncer(pg_server: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgBouncer]:
    params = conninfo_to_dict(pg_server.admin_dsn)
    proc = PgBouncer(tmp_path_factory.mktemp("pgbouncer"), int(params.get("port") or 5432),
                     users=[str(params.get("user") or "postgres")], pool_size=10)
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture
def off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGQUEUE_PREPARED_STATEMENTS", "off")


def test_a_statement_prepared_through_pgbouncer_is_missing_on_the_next_server_connection(
        bouncer: PgBouncer, empty_dsn: str) -> None:
    """Why prepared statements must be off: the second execution of a prepared statement meets
    another server connection when the first one is busy with another client's transaction."""
    through = bouncer.dsn_for(empty_dsn)
    with psycopg.connect(through, autocommit=True) as a, psycopg.connect(through, autocommit=True) as b:
        a.execute("SELECT %s::int", (1,), prepare=True)
        with b.transaction():
            b.execute("SELECT 1")  # b now holds the server connection a prepared on
            with pytest.raises(psycopg.errors.InvalidSqlStatementName):
                a.execute("SELECT %s::int", (2,), prepare=True)


def test_database_prepares_nothing_when_told_off(bouncer: PgBouncer, dsn: str, off: None) -> None:
    """The same interleaving, through a `Database` with PGQUEUE_PREPARED_STATEMENTS=off: its
    named queries (prepared otherwise) run on any server connection."""
    through = bouncer.dsn_for(dsn)
    db = Database(through, pool_size=1)
    try:
        run = PgQueue(through).enqueue("nothing.here", {})
        with psycopg.connect(through, autocommit=True) as other:
            for _ in range(8):
                db.execute(get_run_op(run.id))
                with other.transaction():
                    other.execute("SELECT 1")
                    db.execute(get_run_op(run.id))
    finally:
        db.close()


def test_migrate_through_pgbouncer_concurrently(bouncer: PgBouncer, empty_dsn: str, off: None) -> None:
    through = bouncer.dsn_for(empty_dsn)
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda _: migrate(through), range(3)))
    assert sum(len(r) for r in results) == len(set(name for r in results for name in r)) > 0
    check_schema(through)
    assert migrate(through) == []
    # no session lock left behind on any server connection
    with psycopg.connect(empty_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'").fetchone() == (0,)


@pytest.fixture
def topology_tasks(dsn: str) -> Iterator[Any]:
    import topology_app

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(topology_app.LOG_DDL)
        conn.execute("TRUNCATE topo_log")
    yield topology_app
    bind(topology_app.app, None)
    topology_app.app.db.listen_setting = None


@pytest.mark.parametrize("listen", ["direct", "off"])
def test_core_through_pgbouncer(bouncer: PgBouncer, dsn: str, topology_tasks: Any, off: None,
                                tmp_path: Path, listen: str) -> None:
    """Producers and two worker processes all through PgBouncer (transaction pooling), LISTEN
    straight to PostgreSQL or off (polling)."""
    through = bouncer.dsn_for(dsn)
    listen_dsn = dsn if listen == "direct" else "off"
    bind(topology_tasks.app, through)
    topology_tasks.app.db.listen_setting = listen_dsn
    workers = Workers(through, tmp_path, app="topology_app:app",
                      env={"PGQUEUE_PREPARED_STATEMENTS": "off", "PGQUEUE_LISTEN_DSN": listen_dsn})
    try:
        for _ in range(2):
            workers.start(*FAST, "--concurrency", "8")
        exercise_core(topology_tasks, dsn)
    finally:
        workers.stop_all()
    for i in range(2):
        log = workers.log_of(i)
        assert "Traceback" not in log and "prepared statement" not in log, log
        assert ("claims poll only" in log) == (listen == "off"), log
