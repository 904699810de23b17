"""Pieces shared by the commands: error reporting and the DSN option."""

from __future__ import annotations

import functools
import gc
import json
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar

import click

from pgqueue import PgQueueError

F = TypeVar("F", bound=Callable[..., Any])

def quiet_pool_finalizer(unraisable: Any) -> None:
    """An unraisable-exception hook that drops one known harmless report, and passes on the rest.

    A command drops its app's connection pools without closing them. psycopg_pool's
    `ConnectionPool.__del__` joins the pool's threads, and when the collector happens to run it on
    one of those threads, the join raises "cannot join current thread" and Python prints its
    traceback after the command's own output. The pool is being thrown away either way."""
    exc, source = unraisable.exc_value, getattr(unraisable.object, "__qualname__", "")
    if isinstance(exc, RuntimeError) and "join current thread" in str(exc) and source == "ConnectionPool.__del__":
        return
    sys.__unraisablehook__(unraisable)


def friendly_errors(fn: F) -> F:
    """Turn pgqueue's errors into one line on stderr and exit status 1, never a traceback.

    Before the command exits, the connection pools it opened are closed by a collection, while
    the interpreter still runs: left to the interpreter's exit (an error's traceback keeps the
    command's frames, and the app, alive until then), psycopg_pool's `__del__` may print a
    traceback of its own after the one-line error.
    """
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            result = fn(*args, **kwargs)
        except PgQueueError as exc:
            failure = click.ClickException(str(exc))
        except click.ClickException as exc:
            failure = exc
        else:
            gc.collect()
            return result
        failure.__traceback__ = failure.__context__ = failure.__cause__ = None
        gc.collect()
        failure.show()
        sys.exit(failure.exit_code)
    return wrapper  # type: ignore[return-value]


dsn_option = click.option("--dsn", envvar="PGQUEUE_DSN", default=None, show_envvar=True,
                          help="PostgreSQL DSN (else PGQUEUE_DSN, else DATABASE_URL).")


json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


def print_json(value: Any) -> None:
    click.echo(json.dumps(value, default=str, indent=2))


#: colours of statuses and outcomes (shown only on a terminal: click.echo strips them when piped)
STATUS_COLOURS = {
    "succeeded": "green", "failed": "red", "dead": "red", "crashed": "red", "timeout": "red", "expired": "red",
    "running": "cyan", "queued": "yellow", "retry": "yellow", "sleeping": "blue", "waiting": "blue",
    "scheduled": "blue", "cancelled": "magenta", "handed_back": "magenta", "paused": "magenta",
    "active": "green",
}
#: columns whose values are statuses
STATUS_COLUMNS = frozenset({"status", "state", "outcome"})


def status_text(value: str) -> str:
    colour = STATUS_COLOURS.get(value)
    return click.style(value, fg=colour, bold=True if value in ("failed", "dead") else None) if colour else value


def render_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """Lines of an aligned table: numbers right-aligned, statuses coloured, headers bold."""
    cells = [[cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    numeric = [bool(rows) and all(isinstance(r[i], (int, float)) or r[i] is None for r in rows)
               for i in range(len(headers))]

    def line(values: Sequence[str], style: bool) -> str:
        parts = []
        for i, (value, width) in enumerate(zip(values, widths, strict=True)):
            padded = value.rjust(width) if numeric[i] else value.ljust(width)
            if style and headers[i] in STATUS_COLUMNS and value in STATUS_COLOURS:
                padded = status_text(value) + padded[len(value):]  # pad outside the colour codes
            parts.append(padded)
        return "  ".join(parts).rstrip()

    header = line([h.upper() for h in headers], style=False)
    return [click.style(header, bold=True), *(line(row, style=True) for row in cells)]


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    for text in render_table(headers, rows):
        click.echo(text)


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, float):
        return f"{value:.1f}"
    text = str(value)
    # a newline or terminal escape in a stored name must not forge a row or restyle the screen
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


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
