"""Migrations: applied in order, once, safely under concurrency; version checks."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest

from pgqueue import PgQueue, SchemaMissing, SchemaOutdated
from pgqueue.errors import MigrationFailed, SchemaTooNew
from pgqueue.migrations import check_schema, migrate, pending
from pgqueue.sqlfiles import latest_version, migrations


def test_migrations_are_numbered_without_gaps() -> None:
    versions = [m.version for m in migrations()]
    assert versions == list(range(1, latest_version() + 1))


def test_fresh_database_is_missing_then_migrated(empty_dsn: str) -> None:
    with pytest.raises(SchemaMissing, match="pgqueue migrate"):
        check_schema(empty_dsn)
    assert len(pending(empty_dsn)) == latest_version()
    applied = migrate(empty_dsn)
    assert len(applied) == latest_version()
    check_schema(empty_dsn)
    assert migrate(empty_dsn) == []
    assert pending(empty_dsn) == []


def test_concurrent_migrate_applies_each_migration_once(empty_dsn: str) -> None:
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda _: migrate(empty_dsn), range(6)))
    # each migration's transaction takes the lock on its own (no session lock, for PgBouncer):
    # the runs may share the work, but every migration is applied by exactly one of them
    names = [name for r in results for name in r]
    assert sorted(names) == [f"{m.version:04d}_{m.name}" for m in migrations()]
    with psycopg.connect(empty_dsn) as conn:
        rows = conn.execute("SELECT version, count(*) FROM pgqueue.schema_migrations GROUP BY version").fetchall()
    assert sorted(rows) == [(v, 1) for v in range(1, latest_version() + 1)]


def test_library_refuses_an_outdated_or_newer_schema(empty_dsn: str) -> None:
    migrate(empty_dsn)
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM pgqueue.schema_migrations WHERE version = %s", (latest_version(),))
    app = PgQueue(empty_dsn)
    with pytest.raises(SchemaOutdated, match="run `pgqueue migrate`"):
        app.enqueue("anything", {})
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO pgqueue.schema_migrations VALUES (%s, 'x'), (%s, 'future')",
                     (latest_version(), latest_version() + 1))
    with pytest.raises(SchemaTooNew, match="upgrade pgqueue"):
        check_schema(empty_dsn)


def test_failed_migration_leaves_no_partial_state(empty_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from pgqueue import sqlfiles as _sql

    shipped = latest_version()
    broken = (*migrations(), _sql.Migration(shipped + 1, "broken",
                                            "CREATE TABLE pgqueue.half_done (x int); SELECT 1/0;"))
    monkeypatch.setattr(_sql, "migrations", lambda: broken)
    monkeypatch.setattr("pgqueue.migrations.migrations", lambda: broken)
    with pytest.raises(MigrationFailed, match=r"migration \d{4}_broken failed and was rolled back: division by zero"):
        migrate(empty_dsn)
    with psycopg.connect(empty_dsn) as conn:
        assert conn.execute("SELECT to_regclass('pgqueue.half_done')").fetchone() == (None,)
        assert conn.execute("SELECT max(version) FROM pgqueue.schema_migrations").fetchone() == (shipped,)
