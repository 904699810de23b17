"""`pgqueue sessions`: keyed sessions, their keys and their durable state."""

from __future__ import annotations

import dataclasses

import click

from pgqueue import PgQueue
from pgqueue.sessions import list_keys_op, list_sessions_op

from .common import dsn_option, friendly_errors, json_option, print_json, table


@click.group("sessions")
def sessions_group() -> None:
    """Keyed sessions (@app.session): invoke one with `pgqueue enqueue NAME --input '{...}'`."""


@sessions_group.command("list")
@json_option
@dsn_option
@friendly_errors
def list_cmd(as_json: bool, dsn: str | None) -> None:
    """The sessions workers declared: keys seen, keys held by an invocation, invocations waiting."""
    rows = PgQueue(dsn).db.execute(list_sessions_op())
    if as_json:
        print_json([dataclasses.asdict(row) for row in rows])
        return
    table(["session", "key field", "keys", "active", "waiting"],
          [(r.name, r.key_field, r.keys, r.active, r.waiting) for r in rows])


@sessions_group.command("keys")
@click.argument("session")
@click.option("--after", default="", help="Start after this key (keys are listed in order).")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 10_000))
@json_option
@dsn_option
@friendly_errors
def keys_cmd(session: str, after: str, limit: int, as_json: bool, dsn: str | None) -> None:
    """The keys of SESSION: the invocation holding each, how many wait, the state's size."""
    app = PgQueue(dsn)
    app.get_session_state(session, "")  # an unknown session says so
    rows = app.db.execute(list_keys_op(session, after, limit))
    if as_json:
        print_json([dataclasses.asdict(row) for row in rows])
        return
    table(["key", "running invocation", "waiting", "invocations", "state bytes", "updated"],
          [(r.key, r.active_run or "-", r.waiting, r.invocations, r.state_bytes, r.updated_at) for r in rows])


@sessions_group.command("state")
@click.argument("session")
@click.argument("key")
@dsn_option
@friendly_errors
def state_cmd(session: str, key: str, dsn: str | None) -> None:
    """The durable state of KEY in SESSION as of its last checkpoint, as JSON ({} if never invoked)."""
    print_json(PgQueue(dsn).get_session_state(session, key))
