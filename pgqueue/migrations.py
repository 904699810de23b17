"""Applying `sql/migrations` and `sql/functions`, and checking that a database matches this code.

What migrate does, and why in this order:

- `sql/migrations/000N_*.sql` hold what cannot simply be re-created: tables, types, indexes,
  triggers, data changes, and the DROP of a function signature that changed. Each pending one
  runs once, in its own transaction, and is recorded in `pgqueue.schema_migrations`.
- `sql/functions/*.sql` hold the current definition of every function (`CREATE OR REPLACE`).
  They are not versioned: every migrate run re-applies all of them after the pending migrations,
  in one transaction, and records their sha256 in `pgqueue.schema_functions`.
- Functions come after the migrations because their signatures use the tables' row types
  (`pgqueue.rate_bucket` returns a `pgqueue.rate_limits`) and because a migration must drop a
  changed signature before CREATE OR REPLACE would add the new one beside it. Their bodies are
  not checked at creation (`check_function_bodies = off`, as pg_dump does), so the files apply
  in any order.
- A migration that creates a trigger needs the trigger's function to exist. Trigger functions
  (`sql/functions/triggers.sql`) depend on no table at creation (no arguments, `RETURNS
  trigger`), so migrate creates them at the start of every migration's transaction as well.
  While a migration runs, the other functions are missing (a fresh database) or old (an
  upgrade): a migration must not call them (write its data changes in plain SQL).

Each of these transactions takes one transaction-level advisory lock first (and a migration's
checks again that it is still missing), so concurrent runs are safe, and no session state is
left behind, so migrate also works through PgBouncer in transaction pooling mode.

Without Python, the same steps: create the schema and the ledger (`create_ledger` in
sql/queries/migrations.sql); for each missing migration, in one transaction: `SET LOCAL
check_function_bodies = off`, sql/functions/triggers.sql, the migration, its row in
`pgqueue.schema_migrations`; then in one transaction: `SET LOCAL check_function_bodies = off`,
every file of sql/functions in name order, and the sha256 of those files concatenated (in that
order) in `pgqueue.schema_functions`.
"""

from __future__ import annotations

from .config import connect, connect_async, first_line
from .errors import MigrationFailed, SchemaMissing, SchemaOutdated, SchemaTooNew
from .ops import Op, Statement, execute_on, execute_on_async, statement
from .sqlfiles import (
    FunctionFile,
    functions,
    functions_sha256,
    latest_version,
    migrations,
    roles_sql,
    trigger_functions,
)

FUNCTIONS_DIFFER = ("the pgqueue functions in this database differ from this pgqueue's; "
                    "run `pgqueue migrate`")


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


def check_functions(stored_sha256: str | None) -> None:
    """Raise unless the database's functions were applied from the same files as this code's."""
    if stored_sha256 != functions_sha256():
        raise SchemaOutdated(FUNCTIONS_DIFFER)


def applied_versions_op() -> Op[list[int] | None]:
    exists = (yield statement("migrations.ledger_exists"))[0][0]
    if not exists:
        return None
    return [row[0] for row in (yield statement("migrations.applied"))]


def check_schema_op() -> Op[None]:
    check_versions((yield from applied_versions_op()))
    stored = yield statement("migrations.functions_sha256")
    check_functions(stored[0][0] if stored else None)


def _apply_function_file(file: FunctionFile) -> Op[None]:
    try:
        yield Statement(file.sql)
    except Exception as exc:
        raise MigrationFailed(f"sql/functions/{file.name} failed and was rolled back: {first_line(exc)}") from exc


def migrate_op() -> Op[list[str]]:
    """Apply what is missing, each migration in its own transaction, then all functions, each
    transaction under the migration lock (see the module's docstring)."""
    applied_now: list[str] = []
    yield Statement("BEGIN")
    yield statement("migrations.lock")
    try:
        yield statement("migrations.create_ledger")
    except Exception as exc:
        raise MigrationFailed(f"cannot create the pgqueue schema and its ledger: {first_line(exc)}; run "
                              "`pgqueue migrate` as the database's owner (no superuser needed)") from exc
    applied = set((yield from applied_versions_op()) or [])
    yield Statement("COMMIT")
    for migration in migrations():
        if migration.version in applied:
            continue
        yield Statement("BEGIN")
        yield statement("migrations.lock")
        # another migrate may have applied it while this one waited for the lock
        if (yield statement("migrations.is_applied", (migration.version,)))[0][0]:
            yield Statement("COMMIT")
            continue
        yield statement("migrations.skip_function_bodies")
        yield from _apply_function_file(trigger_functions())
        try:
            yield Statement(migration.sql)
        except Exception as exc:
            raise MigrationFailed(
                f"migration {migration.version:04d}_{migration.name} failed and was rolled back: "
                f"{first_line(exc)}") from exc
        yield statement("migrations.record", (migration.version, migration.name))
        yield Statement("COMMIT")
        applied_now.append(f"{migration.version:04d}_{migration.name}")
    yield Statement("BEGIN")
    yield statement("migrations.lock")
    yield statement("migrations.skip_function_bodies")
    for file in functions():
        yield from _apply_function_file(file)
    yield statement("migrations.record_functions", (functions_sha256(),))
    yield Statement("COMMIT")
    return applied_now


def migrate(dsn: str) -> list[str]:
    """Bring the database up to date; returns the names of the migrations applied now (the
    functions are re-applied on every run and not listed)."""
    with connect(dsn, autocommit=True) as conn:
        return execute_on(conn, migrate_op())


def apply_roles(dsn: str) -> None:
    """Create the pgqueue_producer, pgqueue_worker and pgqueue_reader roles if missing and grant
    them what they need (sql/roles.sql), in one transaction; run by the schema's owner after
    `migrate`."""
    with connect(dsn, autocommit=True) as conn, conn.transaction():
        execute_on(conn, _roles_op())


def _roles_op() -> Op[None]:
    try:
        yield Statement(roles_sql())
    except Exception as exc:
        raise MigrationFailed(f"sql/roles.sql failed and was rolled back: {first_line(exc)}; run it as the "
                              "owner of the pgqueue schema, with CREATEROLE (or create the three roles "
                              "first)") from exc


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
