"""Enqueue inside a SQLAlchemy transaction: the psycopg connection under a session or connection.

    with Session(engine) as session, session.begin():
        session.add(Order(...))
        send_receipt.options(connection=psycopg_connection(session)).enqueue(order_id)

The run is written by the session's own database transaction: it exists only if the session
commits. The engine must use psycopg 3 (`postgresql+psycopg://...`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import psycopg
from sqlalchemy import Connection
from sqlalchemy.orm import Session

from ..errors import ConfigurationError

if TYPE_CHECKING:  # imported when used: SQLAlchemy's asyncio needs greenlet, sync code does not
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession


def psycopg_connection(bind: Session | Connection) -> psycopg.Connection[Any]:
    """The psycopg connection under a session (its connection for the current transaction,
    begun if need be) or a connection."""
    connection = bind.connection() if isinstance(bind, Session) else bind
    raw = _check(connection.connection.driver_connection, psycopg.Connection, connection)
    return cast(psycopg.Connection[Any], raw)


async def async_psycopg_connection(bind: AsyncSession | AsyncConnection) -> psycopg.AsyncConnection[Any]:
    """The psycopg async connection under an async session or connection, for `enqueue_async`."""
    from sqlalchemy.ext.asyncio import AsyncSession

    connection = await bind.connection() if isinstance(bind, AsyncSession) else bind
    raw = await connection.get_raw_connection()
    driver = _check(raw.driver_connection, psycopg.AsyncConnection, connection)
    return cast(psycopg.AsyncConnection[Any], driver)


def _check(raw: object, expected: type[object], connection: Any) -> object:
    if not isinstance(raw, expected):
        raise ConfigurationError(
            f"this SQLAlchemy engine's driver gives {type(raw).__module__}.{type(raw).__name__} connections; "
            f"pgqueue enqueues on psycopg 3 ones: use a 'postgresql+psycopg://' URL "
            f"(this one is {connection.engine.url.drivername!r})")
    return raw
