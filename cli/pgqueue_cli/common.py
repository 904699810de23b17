"""Pieces shared by the commands: error reporting and the DSN option."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
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


json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


def print_json(value: Any) -> None:
    click.echo(json.dumps(value, default=str, indent=2))


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    click.echo("  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for row in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


def parse_when(value: str | None) -> datetime | None:
    """An ISO date-time with a time zone, from an option."""
    if value is None:
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an ISO date-time such as 2026-12-01T09:00:00+00:00") from None
    if when.tzinfo is None:
        raise click.BadParameter("give a time zone, e.g. 2026-12-01T09:00:00+00:00")
    return when
