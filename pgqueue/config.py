"""Where the DSN comes from, and opening connections with errors that say what to do."""

from __future__ import annotations

import os
import re
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.types.json import set_json_loads

from .codec import load_stored_json
from .errors import ConfigurationError, DatabaseUnavailable

DSN_VARIABLES = ("PGQUEUE_DSN", "DATABASE_URL")

# SQLAlchemy's URLs name a driver after the scheme (postgresql+psycopg://...): libpq does not
# know them, and DATABASE_URL often holds one
_DRIVER_SUFFIX = re.compile(r"^(postgres(?:ql)?)\+(?:psycopg2?|psycopg2cffi|asyncpg|pg8000)://", re.IGNORECASE)
_URL_PASSWORD = re.compile(r"(://[^:/@?#\s]*:)([^@/?#\s]*)@")
_KEYWORD_PASSWORD = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'?|[^\s']+)", re.IGNORECASE)


def normalize_dsn(dsn: str) -> str:
    """The DSN libpq understands: a SQLAlchemy-style `postgresql+psycopg://` loses its `+driver`."""
    return _DRIVER_SUFFIX.sub(r"\1://", dsn.strip())


def mask_password(text: str, dsn: str | None = None) -> str:
    """TEXT with every password (of a URL, a password= keyword, or DSN's own) replaced by ***."""
    secrets = [m[2] for m in _URL_PASSWORD.finditer(dsn or "")] + [m[2] for m in _KEYWORD_PASSWORD.finditer(dsn or "")]
    for secret in sorted((s for s in secrets if len(s.strip("'")) >= 1), key=len, reverse=True):
        text = text.replace(secret, "***")
        if secret.strip("'"):
            text = text.replace(secret.strip("'"), "***")
    text = _URL_PASSWORD.sub(r"\1***@", text)
    return _KEYWORD_PASSWORD.sub(r"\1***", text)


def resolve_dsn(explicit: str | None = None) -> str | None:
    """The DSN from the argument, else PGQUEUE_DSN, else DATABASE_URL; None when none is set."""
    if explicit:
        return normalize_dsn(explicit)
    for name in DSN_VARIABLES:
        value = os.environ.get(name)
        if value:
            return normalize_dsn(value)
    return None


def require_dsn(explicit: str | None = None) -> str:
    dsn = resolve_dsn(explicit)
    if dsn is None:
        raise ConfigurationError(
            "no database configured: pass --dsn, or set PGQUEUE_DSN (or DATABASE_URL), "
            "e.g. PGQUEUE_DSN=postgresql://user:pass@localhost:5432/app; "
            "for a local database to try things, run `pgqueue dev`"
        )
    check_dsn_syntax(dsn)
    return dsn


def check_dsn_syntax(dsn: str) -> dict[str, Any]:
    """The DSN's parameters; ConfigurationError (which never shows the password) if it does not parse."""
    try:
        return conninfo_to_dict(normalize_dsn(dsn))
    except psycopg.ProgrammingError as exc:
        raise ConfigurationError(f"the DSN is not valid ({mask_password(first_line(exc), dsn)}); "
                                 "use the form postgresql://user:pass@host:5432/dbname") from None


def describe_dsn(dsn: str) -> str:
    """host:port/dbname of a DSN, never the password, for logs."""
    params = check_dsn_syntax(dsn)
    host = params.get("host") or "localhost"
    port = params.get("port") or "5432"
    return f"{host}:{port}/{params.get('dbname') or params.get('user') or ''}"


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def connection_error(dsn: str, exc: psycopg.OperationalError) -> DatabaseUnavailable:
    return DatabaseUnavailable(
        f"cannot connect to PostgreSQL at {describe_dsn(dsn)}: {mask_password(first_line(exc), dsn)}; "
        "check that the server runs and that the DSN (PGQUEUE_DSN, DATABASE_URL or --dsn) is right"
    )


def configure_connection(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> None:
    """Set up a connection pgqueue opened: json/jsonb columns decode with a depth bound, so a
    value nested too deeply (written around pgqueue's functions) reads as an UndecodableJSON
    marker instead of a RecursionError that would fail the whole fetch."""
    set_json_loads(load_stored_json, conn)


async def configure_connection_async(conn: psycopg.AsyncConnection[Any]) -> None:
    configure_connection(conn)


#: where LISTEN connects when it must not go through the DSN's pooler (a transaction-pooling
#: PgBouncer never delivers notifications: the server connection that listened goes back to its
#: pool); `off` turns listening off, and workers and waits poll instead
LISTEN_DSN_VARIABLE = "PGQUEUE_LISTEN_DSN"
LISTEN_OFF = "off"
#: `off` turns server-side prepared statements off (PgBouncer before 1.21 in transaction mode)
PREPARED_STATEMENTS_VARIABLE = "PGQUEUE_PREPARED_STATEMENTS"


def prepared_statements_setting() -> bool:
    """Whether pools prepare their statements on the server: PGQUEUE_PREPARED_STATEMENTS (on/off),
    on by default. A transaction pooler sends each transaction to whichever server connection
    is free, where a statement prepared on another one does not exist."""
    value = os.environ.get(PREPARED_STATEMENTS_VARIABLE, "on").strip().lower()
    if value in ("on", "true", "1", "yes", ""):
        return True
    if value in ("off", "false", "0", "no"):
        return False
    raise ConfigurationError(f"{PREPARED_STATEMENTS_VARIABLE}={value!r} is not understood; "
                             "set it to on, or off behind PgBouncer in transaction pooling mode")


#: seconds to wait for a connection when the DSN does not say (libpq waits for ever): a server
#: that accepts and never answers must not hang a worker's start, reconnects or shutdown
CONNECT_TIMEOUT = 10


def connection_kwargs(dsn: str, **kwargs: Any) -> dict[str, Any]:
    """`kwargs`, with a connect timeout unless the DSN sets one, and without server-side prepared
    statements when PGQUEUE_PREPARED_STATEMENTS says so (unless `kwargs` decide)."""
    if "connect_timeout" not in check_dsn_syntax(dsn):
        kwargs.setdefault("connect_timeout", CONNECT_TIMEOUT)
    if not prepared_statements_setting():
        kwargs.setdefault("prepare_threshold", None)
    return kwargs


def connect(dsn: str, **kwargs: Any) -> psycopg.Connection[Any]:
    """A plain connection, with a one-line error when the server cannot be reached."""
    try:
        conn = psycopg.connect(normalize_dsn(dsn), **connection_kwargs(dsn, **kwargs))
    except psycopg.OperationalError as exc:
        raise connection_error(dsn, exc) from None
    configure_connection(conn)
    return conn


async def connect_async(dsn: str, **kwargs: Any) -> psycopg.AsyncConnection[Any]:
    try:
        conn = await psycopg.AsyncConnection.connect(normalize_dsn(dsn), **connection_kwargs(dsn, **kwargs))
    except psycopg.OperationalError as exc:
        raise connection_error(dsn, exc) from None
    configure_connection(conn)
    return conn
