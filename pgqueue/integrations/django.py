"""Django: enqueue on Django's own database connection, and the DSN from Django's settings.

    from django.db import transaction
    from pgqueue.integrations.django import psycopg_connection

    with transaction.atomic():
        order = Order.objects.create(...)
        send_receipt.options(connection=psycopg_connection()).enqueue(order.id)

The run is written in the `atomic()` block's transaction: it exists only if the block commits.
This needs Django's PostgreSQL backend on psycopg 3 (Django 4.2 or later with psycopg installed,
which pgqueue requires anyway). `transaction.on_commit(lambda: task.enqueue(...))` is the
alternative for a connection pgqueue cannot use: the run is then enqueued after the commit, and
lost if the process dies between the two.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo

from ..errors import ConfigurationError

#: keys of a database's OPTIONS that are Django's own, not libpq connection parameters
DJANGO_OPTIONS = {"pool", "server_side_binding", "isolation_level", "assume_role", "cursor_factory", "context"}
POSTGRESQL_ENGINES = ("django.db.backends.postgresql", "django.contrib.gis.db.backends.postgis")


def psycopg_connection(using: str = "default") -> psycopg.Connection[Any]:
    """The psycopg connection of Django's connection `using` (opened if need be): inside
    `transaction.atomic()`, statements on it are part of the block's transaction."""
    from django.db import connections

    wrapper = connections[using]
    if wrapper.vendor != "postgresql":
        raise ConfigurationError(f"Django's database {using!r} is {wrapper.vendor}, not PostgreSQL: "
                                 "pgqueue cannot enqueue in its transactions")
    wrapper.ensure_connection()
    raw = wrapper.connection
    if not isinstance(raw, psycopg.Connection):
        raise ConfigurationError(
            f"Django's database {using!r} is connected with {type(raw).__module__} (psycopg2?): pgqueue "
            "enqueues on psycopg 3 connections; with psycopg installed (and psycopg2 uninstalled), Django "
            "4.2 or later uses it. Or enqueue after the commit: transaction.on_commit(lambda: task.enqueue(...))")
    return raw


def dsn_from_settings(using: str = "default") -> str:
    """`settings.PGQUEUE_DSN` if set, else a DSN for the database `using` of `settings.DATABASES`
    (NAME, USER, PASSWORD, HOST, PORT, and the libpq parameters among its OPTIONS)."""
    from django.conf import settings

    given = getattr(settings, "PGQUEUE_DSN", None)
    if given:
        return str(given)
    databases: dict[str, dict[str, Any]] = settings.DATABASES
    if using not in databases:
        raise ConfigurationError(f"settings.DATABASES has no {using!r} (it has: {', '.join(databases)}); "
                                 "or set settings.PGQUEUE_DSN")
    db = databases[using]
    if db.get("ENGINE") not in POSTGRESQL_ENGINES:
        raise ConfigurationError(f"settings.DATABASES[{using!r}] uses {db.get('ENGINE')!r}: pgqueue runs on "
                                 "PostgreSQL only; set settings.PGQUEUE_DSN to one")
    params = {"dbname": db.get("NAME"), "user": db.get("USER"), "password": db.get("PASSWORD"),
              "host": db.get("HOST"), "port": db.get("PORT")}
    params.update({key: value for key, value in (db.get("OPTIONS") or {}).items()
                   if key not in DJANGO_OPTIONS and isinstance(value, str | int)})
    return make_conninfo("", **{key: str(value) for key, value in params.items() if value not in (None, "")})
