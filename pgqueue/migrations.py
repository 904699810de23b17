"""Applying the numbered migrations of `sql/migrations`, and checking the schema version."""

from __future__ import annotations

from ._ops import Op, Statement, run_async, run_sync
from ._sql import latest_version, migrations, query, shipped_versions
from .config import connect, connect_async, first_line
from .errors import MigrationFailed, SchemaMissing, SchemaOutdated, SchemaTooNew


def _q(name: str) -> Statement:
    return Statement(query("migrations", name))


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
    missing = sorted(set(shipped_versions()) - set(applied))
    if missing:
        raise SchemaOutdated(
            f"the database schema is behind this pgqueue (missing migrations {missing}); "
            "run `pgqueue migrate`"
        )


def applied_versions_op() -> Op[list[int] | None]:
    exists = (yield _q("ledger_exists"))[0][0]
    if not exists:
        return None
    return [row[0] for row in (yield _q("applied"))]


def check_schema_op() -> Op[None]:
    check_versions((yield from applied_versions_op()))


def migrate_op() -> Op[list[str]]:
    """Apply what is missing, each migration in its own transaction, under an advisory lock."""
    applied_now: list[str] = []
    # Session-level lock on the runner's own connection (not a pool): closing the
    # connection after an error releases it.
    yield _q("lock")
    yield _q("create_ledger")
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
        yield Statement(query("migrations", "record"), (migration.version, migration.name))
        yield Statement("COMMIT")
        applied_now.append(f"{migration.version:04d}_{migration.name}")
    yield _q("unlock")
    return applied_now


def migrate(dsn: str) -> list[str]:
    """Bring the database up to date; returns the names of the migrations applied now."""
    with connect(dsn, autocommit=True) as conn:
        return run_sync(conn, migrate_op())


def pending(dsn: str) -> list[str]:
    """Names of migrations not yet applied."""
    with connect(dsn, autocommit=True) as conn:
        versions = run_sync(conn, applied_versions_op())
    applied = set(versions or [])
    return [f"{m.version:04d}_{m.name}" for m in migrations() if m.version not in applied]


def check_schema(dsn: str) -> None:
    with connect(dsn, autocommit=True) as conn:
        run_sync(conn, check_schema_op())


async def check_schema_async(dsn: str) -> None:
    async with await connect_async(dsn, autocommit=True) as conn:
        await run_async(conn, check_schema_op())
