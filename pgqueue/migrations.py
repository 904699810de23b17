"""Applying the numbered migrations of `sql/migrations`, and checking the schema version."""

from __future__ import annotations

from .config import connect, connect_async, first_line
from .errors import MigrationFailed, SchemaMissing, SchemaOutdated, SchemaTooNew
from .ops import Op, Statement, execute_on, execute_on_async, statement
from .sqlfiles import latest_version, migrations


def check_versions(applied: list[int] | None) -> None:
    """Raise unless the applied migrations are exactly those this code ships."""
    if applied is None or not applied:
        raise SchemaMissing("the pgqueue schema is not installed in this database; run `pgqueue migrate`")
    latest = latest_version()
    if max(applied) > latest:
        raise SchemaTooNew(
            f"the database schema is at version {max(applied)} but this pgqueue knows only "
            f"up to {latest}; upgrade pgqueue"
        )
    missing = sorted(set(range(1, latest + 1)) - set(applied))
    if missing:
        raise SchemaOutdated(
            f"the database schema is behind this pgqueue (missing migrations {missing}); "
            "run `pgqueue migrate`"
        )


def applied_versions_op() -> Op[list[int] | None]:
    exists = (yield statement("migrations.ledger_exists"))[0][0]
    if not exists:
        return None
    return [row[0] for row in (yield statement("migrations.applied"))]


def check_schema_op() -> Op[None]:
    check_versions((yield from applied_versions_op()))


def migrate_op() -> Op[list[str]]:
    """Apply what is missing, each migration in its own transaction, under an advisory lock."""
    applied_now: list[str] = []
    # Session-level lock on the runner's own connection (not a pool): closing the
    # connection after an error releases it.
    yield statement("migrations.lock")
    yield statement("migrations.create_ledger")
    applied = set((yield from applied_versions_op()) or [])
    for migration in migrations():
        if migration.version in applied:
            continue
        yield Statement("BEGIN")
        try:
            yield Statement(migration.sql)
        except Exception as exc:
            raise MigrationFailed(
                f"migration {migration.version:04d}_{migration.name} failed and was rolled back: "
                f"{first_line(exc)}") from exc
        yield statement("migrations.record", (migration.version, migration.name))
        yield Statement("COMMIT")
        applied_now.append(f"{migration.version:04d}_{migration.name}")
    yield statement("migrations.unlock")
    return applied_now


def migrate(dsn: str) -> list[str]:
    """Bring the database up to date; returns the names of the migrations applied now."""
    with connect(dsn, autocommit=True) as conn:
        return execute_on(conn, migrate_op())


def pending(dsn: str) -> list[str]:
    """Names of migrations not yet applied."""
    with connect(dsn, autocommit=True) as conn:
        versions = execute_on(conn, applied_versions_op())
    applied = set(versions or [])
    return [f"{m.version:04d}_{m.name}" for m in migrations() if m.version not in applied]


def check_schema(dsn: str) -> None:
    with connect(dsn, autocommit=True) as conn:
        execute_on(conn, check_schema_op())


async def check_schema_async(dsn: str) -> None:
    async with await connect_async(dsn, autocommit=True) as conn:
        await execute_on_async(conn, check_schema_op())
