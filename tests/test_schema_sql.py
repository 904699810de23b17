"""sql/schema.sql and sql/functions against the migrations: the same catalog, no stale function,
and the functions' hash that refuses a database whose functions are not this code's."""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from typing import Any, LiteralString, cast

import psycopg
import pytest

from pgqueue import PgQueue, SchemaOutdated
from pgqueue import sqlfiles as _sql
from pgqueue.errors import MigrationFailed
from pgqueue.migrations import check_schema, migrate
from pgqueue.sqlfiles import FunctionFile, functions, functions_sha256, sql_dir, trigger_functions
from pgqueue.testing import TestServer

# What the comparison looks at, one line per object, each section in a stable order.
CATALOG: dict[str, str] = {
    "relation": """
        SELECT c.relname, c.relkind, coalesce(c.reloptions::text, ''),
               coalesce(obj_description(c.oid, 'pg_class'), '')
          FROM pg_class c WHERE c.relnamespace = 'pgqueue'::regnamespace ORDER BY 1""",
    # position among the live columns: the order matters to SELECT * and to row types
    "column": """
        SELECT c.relname, row_number() OVER (PARTITION BY c.oid ORDER BY a.attnum), a.attname,
               format_type(a.atttypid, a.atttypmod), a.attnotnull, coalesce(pg_get_expr(d.adbin, d.adrelid), ''),
               a.attidentity, a.attgenerated, coalesce(col_description(c.oid, a.attnum), '')
          FROM pg_class c
          JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
          LEFT JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum
         WHERE c.relnamespace = 'pgqueue'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'c')
         ORDER BY 1, 2""",
    "constraint": """
        SELECT conrelid::regclass::text, conname, contype, pg_get_constraintdef(oid)
          FROM pg_constraint WHERE connamespace = 'pgqueue'::regnamespace ORDER BY 1, 2""",
    "index": """
        SELECT pg_get_indexdef(i.indexrelid) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
         WHERE c.relnamespace = 'pgqueue'::regnamespace ORDER BY c.relname""",
    "trigger": """
        SELECT pg_get_triggerdef(t.oid) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
         WHERE c.relnamespace = 'pgqueue'::regnamespace AND NOT t.tgisinternal ORDER BY c.relname, t.tgname""",
    "sequence": """
        SELECT s.seqrelid::regclass::text, format_type(s.seqtypid, NULL), s.seqstart, s.seqincrement,
               s.seqmin, s.seqmax, s.seqcache, s.seqcycle
          FROM pg_sequence s JOIN pg_class c ON c.oid = s.seqrelid
         WHERE c.relnamespace = 'pgqueue'::regnamespace ORDER BY 1""",
    "type": """
        SELECT t.typname, t.typtype FROM pg_type t WHERE t.typnamespace = 'pgqueue'::regnamespace ORDER BY 1""",
    "function": """
        SELECT p.oid::regprocedure::text, pg_get_functiondef(p.oid), coalesce(obj_description(p.oid, 'pg_proc'), '')
          FROM pg_proc p WHERE p.pronamespace = 'pgqueue'::regnamespace ORDER BY 1""",
}


def describe(dsn: str) -> list[str]:
    """The pgqueue schema of the database at `dsn`, as lines of text."""
    lines: list[str] = []
    with psycopg.connect(dsn) as conn:
        for section, sql in CATALOG.items():
            for row in conn.execute(cast(LiteralString, sql)):
                lines.extend(f"{section}: {line}" for line in " | ".join(map(str, row)).splitlines())
    return lines


def run_script(conn: psycopg.Connection[Any], text: str) -> None:
    # the SQL files of this repository, never user input
    conn.execute(cast(LiteralString, text))


@pytest.fixture
def scratch_db(pg_server: TestServer) -> Iterator[Any]:
    """Makes empty databases for one test and drops them at its end."""
    made: list[str] = []

    def make(prefix: str) -> str:
        made.append(pg_server.create_database(prefix, migrated=False))
        return made[-1]

    yield make
    for dsn in made:
        pg_server.drop_database(dsn)


def build_from_schema_sql(dsn: str) -> None:
    """sql/schema.sql and sql/functions, in the order the header of schema.sql gives."""
    with psycopg.connect(dsn) as conn:
        conn.execute("SET LOCAL check_function_bodies = off")
        conn.execute("CREATE SCHEMA pgqueue")
        run_script(conn, trigger_functions().sql)
        run_script(conn, (sql_dir() / "schema.sql").read_text(encoding="utf-8"))
        for file in functions():
            run_script(conn, file.sql)


def test_schema_sql_describes_the_migrated_schema(scratch_db: Any) -> None:
    migrated, documented = scratch_db("t_schema_migrated"), scratch_db("t_schema_documented")
    migrate(migrated)
    build_from_schema_sql(documented)
    want, got = describe(migrated), describe(documented)
    diff = "\n".join(difflib.unified_diff(want, got, "migrations + sql/functions", "sql/schema.sql + sql/functions",
                                         lineterm="", n=1))
    if diff:
        pytest.fail(f"sql/schema.sql differs from what the migrations build:\n{diff}", pytrace=False)
    assert any(line.startswith("function: ") for line in want) and any(line.startswith("trigger: ") for line in want)


def test_every_function_in_the_database_is_defined_in_sql_functions(scratch_db: Any) -> None:
    dsn = scratch_db("t_schema_stale")
    migrate(dsn)
    with psycopg.connect(dsn) as conn:
        for file in functions():
            run_script(conn, file.sql)
        # CREATE OR REPLACE rewrites the function's catalog row even when nothing changed, so a
        # row this transaction did not write is a function no file defines (a stale overload)
        stale = [row[0] for row in conn.execute("""
            SELECT p.oid::regprocedure::text FROM pg_proc p
             WHERE p.pronamespace = 'pgqueue'::regnamespace
               AND p.xmin::text::bigint <> pg_current_xact_id()::text::bigint % 4294967296
             ORDER BY 1""")]
        defined = conn.execute(
            "SELECT count(*) FROM pg_proc WHERE pronamespace = 'pgqueue'::regnamespace").fetchone()
        conn.rollback()
    assert stale == [], f"functions in the migrated database that no file of sql/functions defines: {stale}"
    # procedures (pgqueue.prune_all) are rows of pg_proc too
    assert defined == (sum(f.sql.count("CREATE OR REPLACE FUNCTION pgqueue.")
                           + f.sql.count("CREATE OR REPLACE PROCEDURE pgqueue.") for f in functions()),)


def test_function_bodies_are_valid(dsn: str) -> None:
    """migrate creates functions with their bodies unchecked; here every body is checked against
    the migrated tables (plpgsql is parsed, SQL-language bodies are planned)."""
    with psycopg.connect(dsn) as conn:
        conn.execute("SET LOCAL check_function_bodies = on")
        for file in functions():
            try:
                run_script(conn, file.sql)
            except psycopg.Error as exc:
                pytest.fail(f"sql/functions/{file.name}: {exc}")
        conn.rollback()


def test_migrate_reapplies_every_function(scratch_db: Any) -> None:
    dsn = scratch_db("t_schema_reapply")
    migrate(dsn)
    original = describe(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE OR REPLACE FUNCTION pgqueue.retry_run(run_id bigint) RETURNS text "
                      "LANGUAGE sql AS $$ SELECT 'edited by hand' $$")
    assert describe(dsn) != original
    assert migrate(dsn) == []
    assert describe(dsn) == original


def test_functions_that_differ_are_refused_until_migrated(scratch_db: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    dsn = scratch_db("t_schema_hash")
    migrate(dsn)
    check_schema(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute("SELECT sha256 FROM pgqueue.schema_functions").fetchall() == [(functions_sha256(),)]
        conn.execute("UPDATE pgqueue.schema_functions SET sha256 = 'stale'")
    refused = r"the pgqueue functions in this database differ from this pgqueue's; run `pgqueue migrate`"
    with pytest.raises(SchemaOutdated, match=refused):
        check_schema(dsn)
    app = PgQueue(dsn)
    try:
        with pytest.raises(SchemaOutdated, match=refused):
            app.enqueue("anything", {})
    finally:
        app.close()
    assert migrate(dsn) == []
    check_schema(dsn)

    # a new pgqueue whose only change is in a function file
    changed = tuple(FunctionFile(f.name, f.sql + ("\n-- changed\n" if f.name == "run_actions.sql" else ""))
                    for f in functions())
    monkeypatch.setattr(_sql, "functions", lambda: changed)
    monkeypatch.setattr("pgqueue.migrations.functions", lambda: changed)
    with pytest.raises(SchemaOutdated, match=refused):
        check_schema(dsn)
    assert migrate(dsn) == []
    check_schema(dsn)


def test_a_failing_function_file_changes_nothing(scratch_db: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    dsn = scratch_db("t_schema_broken")
    migrate(dsn)
    before = describe(dsn)
    broken = (*functions(), FunctionFile("zz_broken.sql", "CREATE OR REPLACE FUNCTION pgqueue.retry_run(run_id bigint) "
                                                          "RETURNS text LANGUAGE sql AS $$ SELECT 'x' $$; SELECT 1/0;"))
    monkeypatch.setattr(_sql, "functions", lambda: broken)
    monkeypatch.setattr("pgqueue.migrations.functions", lambda: broken)
    with pytest.raises(MigrationFailed, match=r"sql/functions/zz_broken.sql failed and was rolled back: division by "):
        migrate(dsn)
    assert describe(dsn) == before
    with pytest.raises(SchemaOutdated, match="run `pgqueue migrate`"):
        check_schema(dsn)  # this (broken) code's functions are not the database's
