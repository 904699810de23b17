"""FastAPI with pgqueue: pools opened and closed by the lifespan, runs enqueued in the request's
own database transaction (psycopg, SQLAlchemy async and sync), and the dashboard mounted as an
ASGI sub-app behind the application's own authentication.

    pip install 'pgqueue[fastapi]' sqlalchemy uvicorn
    PGQUEUE_DSN=postgresql://... ADMIN_TOKEN=change-me uvicorn --factory examples.fastapi_app:create_app
    pgqueue worker examples.fastapi_app:queue     # runs the welcome e-mails

A signup and its welcome e-mail commit together: if the request fails after the enqueue, neither
the user nor the run exists. See docs/integrations.md.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import AsyncIterator, Iterator, MutableMapping
from contextlib import asynccontextmanager
from typing import Annotated, Any

import psycopg
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from psycopg_pool import AsyncConnectionPool
from pydantic import BaseModel
from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine

from pgqueue import PgQueue
from pgqueue.dashboard import create_asgi_app
from pgqueue.integrations.sqlalchemy import async_psycopg_connection, psycopg_connection

queue = PgQueue()  # DSN from PGQUEUE_DSN or DATABASE_URL

USERS_DDL = "CREATE TABLE IF NOT EXISTS users (id bigserial PRIMARY KEY, email text NOT NULL UNIQUE)"


@queue.task(queue="email")
def send_welcome(user_id: int, email: str) -> str:
    """Stands in for an e-mail provider's API call."""
    return f"welcome sent to {email} (user {user_id})"


class Signup(BaseModel):
    email: str
    #: fail the request after the enqueue (to see that the run goes with the rollback)
    fail_after_enqueue: bool = False


class Created(BaseModel):
    user_id: int
    run_id: int


# -- who may see the dashboard: the application's own check --------------------------------------


def admin_token() -> str:
    token = os.environ.get("ADMIN_TOKEN", "")
    if not token:
        raise RuntimeError("set ADMIN_TOKEN: the dashboard is only for the application's admins")
    return token


def is_admin(request: Request) -> bool:
    """This application's rule (yours would look up a session or an SSO header)."""
    given = request.headers.get("x-admin-token", "")
    return hmac.compare_digest(given.encode(), admin_token().encode())


def require_admin(scope: MutableMapping[str, Any]) -> bool:
    """The dashboard's `authorize`: FastAPI answers the HTTPException as it does for any route."""
    if not is_admin(Request(scope)):
        raise HTTPException(401, "admins only", headers={"WWW-Authenticate": "X-Admin-Token"})
    return True


# -- the application ------------------------------------------------------------------------------


def create_app() -> FastAPI:
    # secret: every process of the application accepts the dashboard's forms rendered by another
    dashboard = create_asgi_app(queue, authorize=require_admin, secret=admin_token())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        dsn = queue.dsn
        await queue.open_async()  # a wrong DSN or a missing `pgqueue migrate` stops the start here
        pool = AsyncConnectionPool(dsn, min_size=1, max_size=8, open=False)
        await pool.open()
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            await conn.execute(USERS_DDL)
        app.state.pool = pool
        app.state.engine = create_async_engine("postgresql+psycopg://",
                                               async_creator=lambda: psycopg.AsyncConnection.connect(dsn))
        app.state.sync_engine = create_engine("postgresql+psycopg://", creator=lambda: psycopg.connect(dsn))
        try:
            yield
        finally:
            dashboard.close()
            await app.state.engine.dispose()
            app.state.sync_engine.dispose()
            await pool.close()
            await queue.aclose()  # both of pgqueue's pools (the dashboard reads through the sync one)

    app = FastAPI(lifespan=lifespan)
    app.mount("/admin/pgqueue", dashboard)
    app.include_router(router)
    return app


# Each request's own transaction, ended (scope="function") when the endpoint returns, before the
# response is sent: a client that got its 201 finds the user and the run committed.


async def transaction(request: Request) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    """The request's own transaction on the application's psycopg pool: committed when the
    endpoint returns, rolled back when it raises."""
    pool: AsyncConnectionPool = request.app.state.pool
    async with pool.connection() as conn:
        yield conn


async def orm_session(request: Request) -> AsyncIterator[AsyncSession]:
    engine: AsyncEngine = request.app.state.engine
    async with AsyncSession(engine) as session, session.begin():
        yield session


def sync_connection(request: Request) -> Iterator[Connection]:
    engine: Engine = request.app.state.sync_engine
    with engine.begin() as connection:
        yield connection


Transaction = Annotated[psycopg.AsyncConnection[Any], Depends(transaction, scope="function")]
OrmSession = Annotated[AsyncSession, Depends(orm_session, scope="function")]
SyncConnection = Annotated[Connection, Depends(sync_connection, scope="function")]
router = APIRouter()



@router.post("/signups", status_code=201)
async def signup(body: Signup, conn: Transaction) -> Created:
    """psycopg: the user row and the run are written by the same transaction."""
    cur = await conn.execute("INSERT INTO users (email) VALUES (%s) RETURNING id", (body.email,))
    row = await cur.fetchone()
    assert row is not None
    run = await send_welcome.options(connection=conn).enqueue_async(row[0], body.email)
    if body.fail_after_enqueue:
        raise HTTPException(500, "failed after the enqueue: the user and the run are rolled back")
    return Created(user_id=row[0], run_id=run.id)


@router.post("/orm/signups", status_code=201)
async def orm_signup(body: Signup, session: OrmSession) -> Created:
    """SQLAlchemy (async session): the run is written on the session's own connection."""
    user_id = (await session.execute(text("INSERT INTO users (email) VALUES (:email) RETURNING id"),
                                     {"email": body.email})).scalar_one()
    conn = await async_psycopg_connection(session)
    run = await send_welcome.options(connection=conn).enqueue_async(user_id, body.email)
    if body.fail_after_enqueue:
        raise HTTPException(500, "failed after the enqueue: the user and the run are rolled back")
    return Created(user_id=user_id, run_id=run.id)


@router.post("/sync/signups", status_code=201)
def sync_signup(body: Signup, connection: SyncConnection) -> Created:
    """SQLAlchemy (sync connection, in FastAPI's thread pool)."""
    user_id = connection.execute(text("INSERT INTO users (email) VALUES (:email) RETURNING id"),
                                 {"email": body.email}).scalar_one()
    run = send_welcome.options(connection=psycopg_connection(connection)).enqueue(user_id, body.email)
    if body.fail_after_enqueue:
        raise HTTPException(500, "failed after the enqueue: the user and the run are rolled back")
    return Created(user_id=user_id, run_id=run.id)
