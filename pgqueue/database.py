"""The database layer: connections with clear errors, pools, running operations, LISTEN.

Every other module reaches PostgreSQL through a `Database` (or a connection the caller gives),
never through the application object. Operations (see `ops`) run on a pooled connection in
autocommit mode, or in one transaction when asked; a pooled connection the server had ended
(a restart, `pg_terminate_backend`) is replaced and the operation, which never ran, is sent
again on the next one.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any, TypeVar, cast

import psycopg
from psycopg import sql
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from .config import (
    LISTEN_DSN_VARIABLE,
    LISTEN_OFF,
    configure_connection,
    configure_connection_async,
    connect,
    connect_async,
    connection_kwargs,
    require_dsn,
)
from .errors import ConfigurationError, DatabaseInterrupted, DatabaseUnavailable
from .migrations import check_schema_op
from .ops import Op, ServerEndedConnection, ended_by_server, execute_on, execute_on_async, start

T = TypeVar("T")

#: psycopg's default: a statement run this many times on a connection is prepared
PREPARE_THRESHOLD = 5

#: NOTIFY channels: runs became due on a queue (payload: the queue), runs finished
READY_CHANNEL = "pgqueue_ready"
DONE_CHANNEL = "pgqueue_done"


def _listen_statement(channels: tuple[str, ...]) -> sql.Composed:
    return sql.SQL("; ").join(sql.SQL("LISTEN {}").format(sql.Identifier(c)) for c in channels)


class Database:
    """The PostgreSQL database pgqueue runs on: its DSN, its pools, and how operations run.

    Pools open on first use, after a check of the schema version (so that a wrong DSN or a
    missing `pgqueue migrate` fails with a message saying so, not in the pool's retries).
    """

    def __init__(self, dsn: str | None = None, *, pool_size: int = 4, name: str = "pgqueue",
                 prepared_statements: bool | None = None, checkout_timeout: float = 30.0,
                 listen_dsn: str | None = None) -> None:
        self._dsn = dsn
        #: the listen_dsn given (None: PGQUEUE_LISTEN_DSN, else the DSN); see `listen_dsn`
        self.listen_setting = listen_dsn
        #: most connections of each pool; a worker raises it to fit its concurrency
        self.pool_size = pool_size
        self.name = name
        #: seconds to wait for a free pooled connection before PoolTimeout
        self.checkout_timeout = checkout_timeout
        # prepared_statements=False: every statement is planned for its actual parameters (the
        # worker's batches: a generic plan of `complete` was measured scanning all running runs
        # per outcome, 1.3 s instead of 7 ms for a batch of 500), and none is prepared on the
        # server, as a transaction pooler (PgBouncer) needs; None: as PGQUEUE_PREPARED_STATEMENTS
        # says (see `config.prepared_statements_setting`)
        self._connection_kwargs: dict[str, Any] = {"autocommit": True}
        if prepared_statements is not None:
            self._connection_kwargs["prepare_threshold"] = PREPARE_THRESHOLD if prepared_statements else None
        self._pool: ConnectionPool | None = None
        self._async_pool: AsyncConnectionPool | None = None
        self._async_lock: asyncio.Lock | None = None
        #: the event loop the async pool belongs to
        self._async_loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()

    @property
    def dsn(self) -> str:
        return require_dsn(self._dsn)

    @property
    def listen_dsn(self) -> str | None:
        """Where `listen()` connects: the `listen_dsn` given, else PGQUEUE_LISTEN_DSN, else the DSN;
        None when listening is off (`off`: waits and the worker poll instead)."""
        given = self.listen_setting if self.listen_setting is not None else os.environ.get(LISTEN_DSN_VARIABLE)
        if given is None or not given.strip():
            return self.dsn
        if given.strip().lower() == LISTEN_OFF:
            return None
        return require_dsn(given)

    def use_dsn(self, dsn: str | None) -> None:
        """Point at another database (None: the environment's), before any pool is open."""
        if self._pool is not None or self._async_pool is not None:
            raise ConfigurationError("the DSN cannot change once the database's pools are open")
        self._dsn = dsn

    # -- pools -----------------------------------------------------------------------------

    def pool(self) -> ConnectionPool:
        with self._lock:
            if self._pool is None:
                dsn = self.dsn
                with connect(dsn, autocommit=True) as conn:  # clear errors before the pool retries
                    execute_on(conn, check_schema_op())
                self._pool = ConnectionPool(dsn, min_size=1, max_size=self.pool_size,
                                            kwargs=connection_kwargs(dsn, **self._connection_kwargs), open=True,
                                            name=self.name,
                                            timeout=self.checkout_timeout, check=check_idle_connection,
                                            configure=configure_connection)
            return self._pool

    async def async_pool(self) -> AsyncConnectionPool:
        if self._async_pool is None:
            if self._async_lock is None:
                self._async_lock = asyncio.Lock()
            async with self._async_lock:  # many tasks may ask at once: create one pool
                if self._async_pool is None:
                    dsn = self.dsn
                    async with await connect_async(dsn, autocommit=True) as conn:
                        await execute_on_async(conn, check_schema_op())
                    pool = AsyncConnectionPool(dsn, min_size=1, max_size=self.pool_size,
                                               kwargs=connection_kwargs(dsn, **self._connection_kwargs),
                                               open=False,
                                               name=f"{self.name}-async", timeout=self.checkout_timeout,
                                               check=check_idle_connection_async,
                                               configure=configure_connection_async)
                    await pool.open()
                    self._async_pool = pool
                    self._async_loop = asyncio.get_running_loop()
        return self._async_pool

    # -- running operations ----------------------------------------------------------------

    def execute(self, op: Op[T], connection: psycopg.Connection[Any] | None = None,
                transaction: bool = False) -> T:
        """Run an operation on `connection` (the caller's transaction) or a pooled connection."""
        first, value = start(op)
        if first is None:
            return cast(T, value)
        if connection is not None:  # the caller's transaction: never retried here
            try:
                with _maybe_transaction(connection, transaction and _outside_transaction(connection)):
                    return execute_on(connection, op, first)
            except ServerEndedConnection as exc:
                raise _cause(exc) from None
        for tries_left in reversed(range(self.pool_size + 1)):
            began = False
            try:
                with self.pool().connection() as conn, _maybe_transaction(conn, transaction):
                    began = True
                    return execute_on(conn, op, first)
            except (ServerEndedConnection, psycopg.OperationalError) as exc:
                _retry_or_raise(exc, tries_left, began)
        raise AssertionError("unreachable")

    async def execute_async(self, op: Op[T], connection: psycopg.AsyncConnection[Any] | None = None,
                            transaction: bool = False) -> T:
        first, value = start(op)
        if first is None:
            return cast(T, value)
        if connection is not None:
            try:
                async with _maybe_transaction(connection, transaction and _outside_transaction(connection)):
                    return await execute_on_async(connection, op, first)
            except ServerEndedConnection as exc:
                raise _cause(exc) from None
        pool = await self.async_pool()
        for tries_left in reversed(range(self.pool_size + 1)):
            began = False
            try:
                async with pool.connection() as conn, _maybe_transaction(conn, transaction):
                    began = True
                    return await execute_on_async(conn, op, first)
            except (ServerEndedConnection, psycopg.OperationalError) as exc:
                _retry_or_raise(exc, tries_left, began)
        raise AssertionError("unreachable")

    # -- notifications ---------------------------------------------------------------------

    @contextlib.contextmanager
    def listen(self, *channels: str) -> Iterator[psycopg.Connection[Any] | None]:
        """A dedicated connection listening on `channels` (never a pooled one: it would keep
        listening after it went back to the pool), on `listen_dsn`; None when listening is off
        (the caller polls)."""
        dsn = self.listen_dsn
        if dsn is None:
            yield None
            return
        with connect(dsn, autocommit=True) as conn:
            conn.execute(_listen_statement(channels))
            yield conn

    @contextlib.asynccontextmanager
    async def listen_async(self, *channels: str) -> AsyncIterator[psycopg.AsyncConnection[Any] | None]:
        dsn = self.listen_dsn
        if dsn is None:
            yield None
            return
        async with await connect_async(dsn, autocommit=True) as conn:
            await conn.execute(_listen_statement(channels))
            yield conn

    @contextlib.asynccontextmanager
    async def own_async_pool(self) -> AsyncIterator[None]:
        """Inside: async pools of this event loop's own, closed on the way out, after which the
        pool from before (bound to another loop, if any) is back. For code that runs a loop of its
        own for a while (the testing kit's sync `drain`)."""
        saved = self._async_pool, self._async_lock, self._async_loop
        self._async_pool, self._async_lock = None, None
        try:
            yield
        finally:
            if self._async_pool is not None:
                await self._async_pool.close()
            self._async_pool, self._async_lock, self._async_loop = saved

    def reset(self, dsn: str | None) -> str | None:
        """Close the pools and point at `dsn` (None: the environment's), from sync code (a test's
        teardown); returns the DSN given before. An async pool is closed on its event loop when
        that loop is idle; one whose loop is running or gone is dropped, its connections ended
        by the server or at exit."""
        self.close()
        pool, loop = self._async_pool, self._async_loop
        if pool is not None and loop is not None and not loop.is_closed() and not loop.is_running():
            loop.run_until_complete(pool.close())
        self._async_pool, self._async_lock, self._async_loop = None, None, None
        previous, self._dsn = self._dsn, dsn
        return previous

    # -- closing ---------------------------------------------------------------------------

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    async def aclose(self) -> None:
        if self._async_pool is not None:
            await self._async_pool.close()
            self._async_pool = None
        self.close()


#: what a lost or restarting database raises in pgqueue's own calls
CONNECTION_ERRORS = (psycopg.OperationalError, psycopg.InterfaceError, DatabaseUnavailable, OSError)


@contextlib.contextmanager
def engine_call(what: str, connection: psycopg.Connection[Any] | psycopg.AsyncConnection[Any] | None = None
                ) -> Iterator[None]:
    """pgqueue's own database work on behalf of a running task: a lost connection or a
    restarting server becomes `DatabaseInterrupted`, so that the worker tells it apart from an
    error of the task's code (which uses up one of the task's attempts; this does not).

    With `connection` (one pgqueue lent to the task's code, as in `step_in_transaction`), only
    errors that left that connection broken are converted: the code's own errors pass as they are.
    """
    try:
        yield
    except CONNECTION_ERRORS as exc:
        if connection is not None and not (connection.broken or connection.closed):
            raise
        raise DatabaseInterrupted(f"{what} was cut off by the database ({type(exc).__name__}: {exc}); "
                                  "the run is retried without counting a failure") from exc


def _maybe_transaction(conn: Any, transaction: bool) -> Any:
    """`conn.transaction()` when asked, else nothing (works with `with` and `async with`)."""
    return conn.transaction() if transaction else contextlib.nullcontext()


def _outside_transaction(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> bool:
    """Whether statements on a caller's connection would each commit on their own (autocommit),
    so that an operation of several must be wrapped in a transaction of its own. A connection
    out of autocommit is inside the caller's transaction even before its first statement (psycopg
    begins it implicitly), and `transaction()` there would BEGIN and COMMIT a separate one: the
    runs would stay after the caller's rollback (Django's `atomic()`, a SQLAlchemy session)."""
    return bool(conn.autocommit)


def _retry_or_raise(exc: BaseException, tries_left: int, began: bool) -> None:
    """Go on with the next pooled connection only if the operation never ran: its first
    statement (ServerEndedConnection), or the BEGIN before it (not `began`), met a connection
    the server had ended. The same error on a later statement or the COMMIT is raised: the
    operation's generator has gone past its first statement (or is finished), so a retry would
    run that statement alone and report the whole as done."""
    never_ran = isinstance(exc, ServerEndedConnection) or (not began and ended_by_server(exc))
    if not tries_left or not never_ran:
        raise _cause(exc) from None


def _cause(exc: BaseException) -> BaseException:
    return exc.__cause__ if isinstance(exc, ServerEndedConnection) and exc.__cause__ else exc


def _server_spoke(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> bool:
    """Whether an idle connection has something to read: the server ended it, or said something."""
    if conn.closed or conn.broken:
        return True
    readable, _, _ = select.select([conn.fileno()], [], [], 0)
    return bool(readable)


def check_idle_connection(conn: psycopg.Connection[Any]) -> None:
    """Pool checkout check: a connection ended by a server restart or pg_terminate_backend is
    readable (it got the termination notice or EOF), so only then is it pinged (and replaced if
    dead). Costs no round trip for healthy connections."""
    if _server_spoke(conn):
        ConnectionPool.check_connection(conn)


async def check_idle_connection_async(conn: psycopg.AsyncConnection[Any]) -> None:
    if _server_spoke(conn):
        await AsyncConnectionPool.check_connection(conn)
