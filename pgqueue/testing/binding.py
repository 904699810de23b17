"""Pointing an application at a test database for the length of a test."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from ..app import PgQueue


@contextmanager
def bound(app: PgQueue, dsn: str) -> Iterator[PgQueue]:
    """`app` using the database `dsn` inside; its pools are closed on the way out and it points
    where it pointed before (PGQUEUE_DSN's database, say). Pools opened by an event loop that is
    gone by then are dropped, not closed."""
    previous = app.db.reset(dsn)
    try:
        yield app
    finally:
        app.db.reset(previous)
