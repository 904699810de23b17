"""An operation cut off after its first statement is not retried: a retry would run the first
statement alone on a new connection and report the operation as done (found by the chaos
suite: a worker whose registration was cut off this way started without its tasks' limits)."""

from __future__ import annotations

import time
from collections.abc import Generator
from typing import Any

import psycopg
import pytest

from pgqueue import PgQueue
from pgqueue.ops import Statement

TABLE = "CREATE TABLE IF NOT EXISTS cut_off (n int NOT NULL)"


def cut_off_after_first_statement(dsn: str) -> Generator[Statement, Any, str]:
    """Two statements; between them, the backend running the operation is terminated."""
    rows = yield Statement("SELECT pg_backend_pid()")
    pid = rows[0][0]
    with psycopg.connect(dsn, autocommit=True) as other:
        other.execute("SELECT pg_terminate_backend(%s)", (pid,))
        deadline = time.monotonic() + 10
        while other.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone():
            assert time.monotonic() < deadline, "the backend did not end"
            time.sleep(0.01)
    yield Statement("INSERT INTO cut_off (n) VALUES (%s)", (1,))
    return "done"


def inserted(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*) FROM cut_off").fetchone()
        return int(row[0]) if row else 0


@pytest.fixture
def table(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(TABLE)
        conn.execute("TRUNCATE cut_off")


@pytest.mark.parametrize("transaction", [True, False])
def test_an_operation_cut_off_after_its_first_statement_raises(app: PgQueue, dsn: str, table: None,
                                                               transaction: bool) -> None:
    with pytest.raises(psycopg.OperationalError):
        app.db.execute(cut_off_after_first_statement(dsn), transaction=transaction)
    assert inserted(dsn) == 0


@pytest.mark.parametrize("transaction", [True, False])
async def test_an_async_operation_cut_off_after_its_first_statement_raises(async_app: PgQueue, dsn: str,
                                                                           table: None, transaction: bool) -> None:
    with pytest.raises(psycopg.OperationalError):
        await async_app.db.execute_async(cut_off_after_first_statement(dsn), transaction=transaction)
    assert inserted(dsn) == 0
