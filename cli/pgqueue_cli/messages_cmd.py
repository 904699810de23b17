"""`pgqueue runs send`, `runs update` and `runs state`: talk to a running run."""

from __future__ import annotations

import json
from typing import Any

import click

from pgqueue import PgQueue
from pgqueue.messages import UPDATE_TIMEOUT, get_state_op

from .common import dsn_option, friendly_errors, json_option, print_json


def _payload(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"--payload is not valid JSON ({exc.msg}); e.g. --payload '{{\"ok\": true}}'",
                                 param_hint="--payload") from None


@click.command("send")
@click.argument("run_id", type=int)
@click.argument("name")
@click.option("--payload", default="null", show_default=True, help="The message's payload: any JSON value.")
@dsn_option
@friendly_errors
def send_cmd(run_id: int, name: str, payload: str, dsn: str | None) -> None:
    """Send message NAME to run RUN_ID, which takes it with ctx.receive(NAME)."""
    with PgQueue(dsn) as app:
        message_id = app.send(run_id, name, _payload(payload))
    click.echo(f"message {message_id} ({name!r}) sent to run {run_id}")


@click.command("update")
@click.argument("run_id", type=int)
@click.argument("name")
@click.option("--payload", default="null", show_default=True, help="The update's payload: any JSON value.")
@click.option("--timeout", type=float, default=UPDATE_TIMEOUT, show_default=True,
              help="Seconds to wait for the run's reply (exit status 1 after it).")
@dsn_option
@friendly_errors
def update_cmd(run_id: int, name: str, payload: str, timeout: float, dsn: str | None) -> None:
    """Send update NAME to run RUN_ID and print its reply (JSON)."""
    with PgQueue(dsn) as app:
        reply = app.update(run_id, name, _payload(payload), timeout=timeout)
    click.echo(json.dumps(reply))


@click.command("state")
@click.argument("run_id", type=int)
@json_option
@dsn_option
@friendly_errors
def state_cmd(run_id: int, as_json: bool, dsn: str | None) -> None:
    """The state run RUN_ID published last (ctx.set_state), read without waking it."""
    with PgQueue(dsn) as app:
        found = app.db.execute(get_state_op(run_id))
    if as_json:
        print_json({"run": run_id, "status": found.status, "state": found.state, "attempt": found.attempt,
                    "updated_at": found.updated_at})
        return
    if found.updated_at is None:
        click.echo(f"run {run_id} ({found.status}) has published no state (ctx.set_state)")
        return
    click.echo(f"run {run_id} ({found.status}), state of attempt {found.attempt} "
               f"at {found.updated_at:%Y-%m-%d %H:%M:%S}:")
    # json.dumps escapes control characters (ensure_ascii): a stored state cannot restyle the screen
    click.echo(json.dumps(found.state, indent=2))
