"""One logic, two faces: database operations written once, driven sync or async.

An operation is a generator that yields the statements it needs and receives their rows.
It does no I/O itself, so the decisions it makes (what to send, how to read the answer,
which error to raise) exist exactly once; `run_sync` and `run_async` only execute.
"""

from __future__ import annotations

from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, LiteralString, TypeVar, cast

import psycopg

from .errors import InputTooLarge, InvalidInput, InvalidRunState, RunNotFound, SchemaMissing

T = TypeVar("T")
Row = tuple[Any, ...]


@dataclass(frozen=True)
class Statement:
    sql: str
    params: Sequence[Any] | Mapping[str, Any] | None = None
    #: plan it for its actual parameters every time, never from a cached generic plan (for
    #: queries whose best plan depends on the table's size, which may have been tiny when cached)
    custom_plan: bool = False

    @property
    def prepare(self) -> bool | None:
        if self.custom_plan:
            return False
        return self.params is not None


Op = Generator[Statement, list[Row], T]


def _query(statement: Statement) -> LiteralString:
    # SQL comes from the files in sql/, never from user input: values are always bound.
    return statement.sql


def translate(exc: psycopg.Error) -> Exception:
    """The pgqueue error for a database error raised by pgqueue's SQL, else `exc` itself."""
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
    if diag.sqlstate in ("42P01", "42883", "3F000") and "pgqueue" in str(diag.message_primary):
        return SchemaMissing("the pgqueue schema is missing or incomplete in this database; "
                             "run `pgqueue migrate`")
    return exc


_NOT_STARTED: Any = object()


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


def run_sync(conn: psycopg.Connection[Any], op: Op[T], first: Statement = _NOT_STARTED) -> T:
    answered = False
    try:
        statement = next(op) if first is _NOT_STARTED else first
        while True:
            try:
                cur = conn.execute(_query(statement), statement.params, prepare=statement.prepare)
                rows = cur.fetchall() if cur.description is not None else []
            except psycopg.Error as exc:
                if not answered and ended_by_server(exc):
                    raise ServerEndedConnection() from exc
                mapped = translate(exc)
                # the operation may handle the error itself (it is thrown in at its yield)
                statement = op.throw(mapped if mapped is not exc else exc)
                continue
            answered = True
            statement = op.send(rows)
    except StopIteration as done:
        return cast(T, done.value)


async def run_async(conn: psycopg.AsyncConnection[Any], op: Op[T], first: Statement = _NOT_STARTED) -> T:
    answered = False
    try:
        statement = next(op) if first is _NOT_STARTED else first
        while True:
            try:
                cur = await conn.execute(_query(statement), statement.params, prepare=statement.prepare)
                rows = await cur.fetchall() if cur.description is not None else []
            except psycopg.Error as exc:
                if not answered and ended_by_server(exc):
                    raise ServerEndedConnection() from exc
                mapped = translate(exc)
                statement = op.throw(mapped if mapped is not exc else exc)
                continue
            answered = True
            statement = op.send(rows)
    except StopIteration as done:
        return cast(T, done.value)
