"""Test harness: a real PostgreSQL server, and a fresh database per test module.

PGQUEUE_TEST_DSN points the suite at an existing server (its user must be allowed to
CREATE DATABASE). Without it, a throwaway server is started from the embedded package (or
PGQUEUE_PG_BIN's binaries) and removed at the end.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pgqueue import PgQueue
from pgqueue.testing import TestServer
from pgqueue.worker import Worker, WorkerSettings

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def pg_server(pgqueue_server: TestServer) -> TestServer:
    """The testing kit's server (pgqueue/testing/plugin.py): PGQUEUE_TEST_DSN's, or embedded."""
    with psycopg.connect(pgqueue_server.admin_dsn, autocommit=True) as conn:
        version = conn.info.server_version
    print(f"\ntests run on PostgreSQL {version // 10000}.{version % 100}", file=sys.stderr)
    return pgqueue_server


def _module_prefix(request: pytest.FixtureRequest) -> str:
    return "t_" + re.sub(r"\W", "_", request.module.__name__.rpartition(".")[2])


@pytest.fixture(scope="module")
def dsn(pg_server: TestServer, request: pytest.FixtureRequest) -> Iterator[str]:
    """A migrated database of this test module's own (the real clock, as in production)."""
    db = pg_server.create_database(_module_prefix(request), with_clock=False)
    yield db
    pg_server.drop_database(db)


@pytest.fixture
def empty_dsn(pg_server: TestServer, request: pytest.FixtureRequest) -> Iterator[str]:
    """A database without the pgqueue schema, for one test."""
    db = pg_server.create_database(_module_prefix(request) + "_empty", migrated=False)
    yield db
    pg_server.drop_database(db)


@pytest.fixture
def conn(dsn: str) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    with psycopg.connect(dsn, autocommit=True) as connection:
        yield connection


@pytest.fixture
def app(dsn: str) -> Iterator[PgQueue]:
    queue = PgQueue(dsn)
    yield queue
    queue.close()


@pytest.fixture
async def async_app(dsn: str) -> AsyncIterator[PgQueue]:
    queue = PgQueue(dsn)
    yield queue
    await queue.aclose()


@pytest.fixture
def cli_env(dsn: str) -> dict[str, str]:
    """Environment for running the `pgqueue` command against this module's database."""
    env = {k: v for k, v in os.environ.items() if k not in ("PGQUEUE_DSN", "DATABASE_URL")}
    env["PGQUEUE_DSN"] = dsn
    env["PYTHONPATH"] = str(ROOT / "tests")
    return env


@pytest.fixture
def worker_tasks(dsn: str) -> Iterator[Any]:
    """tests/worker_app.py bound to this module's database, with an empty executions table."""
    import worker_app

    bind(worker_app.app, dsn)
    worker_app._conn = None  # it may hold a connection to another module's (dropped) database
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(worker_app.EXECUTIONS_DDL)
        conn.execute("TRUNCATE executions")
    yield worker_app
    bind(worker_app.app, None)


def bind(app: PgQueue, dsn: str | None) -> None:
    """Point a module-level test app at this module's database, closing the pools it had."""
    app.db.reset(dsn)


FAST = {"lease": 2.0, "heartbeat": 0.5, "poll_interval": 0.1, "grace_period": 3.0}


@asynccontextmanager
async def running_worker(app: PgQueue, **settings: Any) -> AsyncIterator[Worker]:
    """A worker running in this event loop, with short intervals; stopped gracefully at the end."""
    worker = Worker(app, WorkerSettings(**{"queues": ["default"], **FAST, **settings}))
    task = asyncio.create_task(worker.serve())
    started = asyncio.create_task(worker.started.wait())
    await asyncio.wait([task, started], timeout=20, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        task.result()  # raise the worker's start-up error
    try:
        yield worker
    finally:
        worker.request_stop()
        await asyncio.wait_for(task, 60)


async def wait_for(predicate: Callable[[], Awaitable[bool]], timeout: float = 20, what: str = "condition") -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


@pytest.fixture
def durable_tasks(dsn: str) -> Iterator[Any]:
    """tests/durable_app.py bound to this module's database, with empty side-effect tables."""
    import durable_app

    bind(durable_app.app, dsn)
    durable_app.BEHAVIOUR.update(store_fails=False, renamed_step=False)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(durable_app.EFFECTS_DDL)
        conn.execute("TRUNCATE effects, stored")
    yield durable_app
    bind(durable_app.app, None)
