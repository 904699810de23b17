"""Pieces shared by the commands: error reporting and the DSN option."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from pgqueue import PgQueueError

F = TypeVar("F", bound=Callable[..., Any])


def friendly_errors(fn: F) -> F:
    """Turn pgqueue's errors into one line on stderr and exit status 1, never a traceback."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except PgQueueError as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(1)
    return wrapper  # type: ignore[return-value]


dsn_option = click.option("--dsn", envvar="PGQUEUE_DSN", default=None, show_envvar=True,
                          help="PostgreSQL DSN (else PGQUEUE_DSN, else DATABASE_URL).")
