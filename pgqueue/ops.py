"""One logic, two faces: database operations written once, driven sync or async.

An operation (`Op`) is a generator that yields the statements it needs and receives their
rows. It does no I/O itself, so the decisions it makes (what to send, how to read the answer,
which error to raise) exist exactly once; `execute_on` and `execute_on_async` only wait for
the database. Statements name their SQL by the registry of `sql/queries` (see `statement`),
and a statement with a `row` class gets its rows built from the columns by name.
"""

from __future__ import annotations

from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import psycopg
from psycopg.rows import RowFactory, class_row, dict_row, tuple_row

from .errors import InputTooLarge, InvalidInput, InvalidRunState, RunNotFound, SchemaMissing, UnknownTask
from .sqlfiles import query

T = TypeVar("T")
Row = Any  # a tuple, or an instance of the statement's row class


@dataclass(frozen=True)
class Statement:
    sql: str
    params: Sequence[Any] | Mapping[str, Any] | None = None
    #: build each row as `row(**columns)` (a dataclass, or dict), matched by column name;
    #: None: plain tuples
    row: Any = None
    #: plan it for its actual parameters every time, never from a cached generic plan (for
    #: queries whose best plan depends on the table's size or on the arrays sent)
    custom_plan: bool = False

    def prepare_on(self, conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> bool:
        """Whether to use a server-side prepared statement: for statements with parameters, unless
        the statement needs a custom plan or the connection was opened without prepared
        statements (`prepare_threshold=None`)."""
        return self.params is not None and not self.custom_plan and conn.prepare_threshold is not None

    def row_factory(self) -> RowFactory[Any]:
        if self.row is None:
            return tuple_row
        if self.row is dict:
            return dict_row
        return class_row(self.row)


def statement(name: str, params: Sequence[Any] | Mapping[str, Any] | None = None, *, row: Any = None,
              custom_plan: bool = False) -> Statement:
    """The named query `group.name` of `sql/queries/<group>.sql` (see `sqlfiles.query`)."""
    return Statement(query(name), params, row, custom_plan)


Op = Generator[Statement, list[Row], T]


# SQLSTATEs of values refused on their way in (None: refused by the driver itself)
_VALUE_REFUSED = {None, "22P02", "22P05", "22021", "22003", "22025", "22032"}


def translate(exc: psycopg.Error | UnicodeEncodeError) -> Exception:
    """The pgqueue error for a database error raised by pgqueue's SQL, else `exc` itself."""
    if isinstance(exc, UnicodeEncodeError):  # a lone surrogate in a str the driver had to send
        return InvalidInput(f"a value cannot be sent to PostgreSQL: {exc.reason} "
                            f"({exc.object[exc.start:exc.end]!a}); send text that is valid Unicode")
    diag = exc.diag
    message = f"{diag.message_primary or exc}".removeprefix("pgqueue: ")
    if diag.message_hint:
        message = f"{message}. {diag.message_hint}"
    if diag.sqlstate == "PQ001":
        return InputTooLarge(message)
    if diag.sqlstate == "PQ002":
        return InvalidInput(message)
    if diag.sqlstate == "PQ003":
        return RunNotFound(message)
    if diag.sqlstate == "PQ004":
        return InvalidRunState(message)
    if diag.sqlstate == "PQ005":
        return UnknownTask(message)
    if isinstance(exc, psycopg.DataError) and diag.sqlstate in _VALUE_REFUSED:
        # a value PostgreSQL cannot take (a NUL character, an invalid Unicode escape, text that
        # is not JSON, a number out of range), or a NUL the driver refused before sending
        return InvalidInput(f"a value was refused by PostgreSQL: {message}; "
                            "check the task's input and options for such values")
    if diag.sqlstate in ("42P01", "42883", "3F000") and "pgqueue" in str(diag.message_primary):
        return SchemaMissing("the pgqueue schema is missing or incomplete in this database; "
                             "run `pgqueue migrate`")
    return exc


NOT_STARTED: Any = object()


def start(op: Op[T]) -> tuple[Statement | None, T | None]:
    """Advance `op` to its first statement; (None, result) when it needs no database at all,
    so that callers only take a connection when there is something to send."""
    try:
        return next(op), None
    except StopIteration as done:
        return None, cast(T, done.value)


class ServerEndedConnection(Exception):
    """The server ended the connection (e.g. pg_terminate_backend, a restart) before it ran the
    operation's first statement: the operation is untouched and can run on another connection."""


def ended_by_server(exc: BaseException) -> bool:
    # 57P01 admin_shutdown, 57P02 crash_shutdown, 57P03 cannot_connect_now: the backend ends the
    # session instead of running the statement, so nothing of it was applied
    return isinstance(exc, psycopg.Error) and (exc.sqlstate or "").startswith("57P0")


class _Driver:
    """Everything about driving an operation except the waiting: which statement comes next,
    and what a database error means for it."""

    def __init__(self, op: Op[Any], first: Statement) -> None:
        self.op = op
        self.result: Any = None
        self.statement: Statement | None = next(op) if first is NOT_STARTED else first
        self._answered = False

    def answered(self, rows: list[Row]) -> None:
        self._answered = True
        self._advance(lambda: self.op.send(rows))

    def failed(self, exc: psycopg.Error | UnicodeEncodeError) -> None:
        if not self._answered and ended_by_server(exc):
            raise ServerEndedConnection() from exc
        mapped = translate(exc)
        # the operation may handle the error itself (it is thrown in at its yield)
        self._advance(lambda: self.op.throw(mapped))

    def _advance(self, step: Any) -> None:
        try:
            self.statement = step()
        except StopIteration as done:
            self.statement, self.result = None, done.value


def execute_on(conn: psycopg.Connection[Any], op: Op[T], first: Statement = NOT_STARTED) -> T:
    """Run `op` on `conn` (in whatever transaction state the caller left it)."""
    driver = _Driver(op, first)
    while (st := driver.statement) is not None:
        try:
            cur = conn.cursor(row_factory=st.row_factory())
            cur.execute(st.sql, st.params, prepare=st.prepare_on(conn))
            rows = cur.fetchall() if cur.description is not None else []
        except (psycopg.Error, UnicodeEncodeError) as exc:
            driver.failed(exc)
            continue
        driver.answered(rows)
    return cast(T, driver.result)


async def execute_on_async(conn: psycopg.AsyncConnection[Any], op: Op[T], first: Statement = NOT_STARTED) -> T:
    driver = _Driver(op, first)
    while (st := driver.statement) is not None:
        try:
            cur = conn.cursor(row_factory=st.row_factory())
            await cur.execute(st.sql, st.params, prepare=st.prepare_on(conn))
            rows = await cur.fetchall() if cur.description is not None else []
        except (psycopg.Error, UnicodeEncodeError) as exc:
            driver.failed(exc)
            continue
        driver.answered(rows)
    return cast(T, driver.result)
