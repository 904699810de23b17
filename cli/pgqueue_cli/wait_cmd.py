"""`pgqueue runs wait`: wait for a run to finish, with a progress bar of its children."""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from typing import Any

import click

from pgqueue import PgQueue, RunInfo

from .common import dsn_option, friendly_errors, json_option, print_json, status_text


class ChildProgress:
    """Children done of a fan-out: a bar on a terminal, else a line whenever the count moves
    (at most one a second, and the last), so that logs of scripts and CI stay short."""

    def __init__(self, run_id: int) -> None:
        self.run_id = run_id
        self.tty = sys.stderr.isatty()
        self.bar: Any = None
        self.done = -1
        self.printed_at = 0.0

    def __call__(self, info: RunInfo) -> None:
        total = info.children_total
        if not total:
            return
        done = total - info.children_pending
        if self.tty:
            if self.bar is None:
                self.bar = click.progressbar(length=total, label=f"run {self.run_id} children", file=sys.stderr,
                                             show_pos=True)
                self.bar.__enter__()
                self.done = 0
            self.bar.length = total  # a fan-out in chunks grows while it spawns
            self.bar.update(done - self.done)
        elif done != self.done and (info.done or done == total or time.monotonic() - self.printed_at >= 1):
            click.echo(f"run {self.run_id}: {done}/{total} children done", err=True)
            self.printed_at = time.monotonic()
        self.done = done

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None


@click.command("wait")
@click.argument("run_id", type=int)
@click.option("--timeout", type=click.FloatRange(min=0), default=None, help="Give up after this many seconds.")
@json_option
@dsn_option
@friendly_errors
def wait_cmd(run_id: int, timeout: float | None, as_json: bool, dsn: str | None) -> None:
    """Wait for RUN_ID to finish; exit 0 if it succeeded, else 1 with its error.

    A run with children (fan-out, workflow nodes) shows how many of them are done.
    Giving up after --timeout also exits 1.
    """
    app = PgQueue(dsn)
    progress = ChildProgress(run_id)
    try:
        info: RunInfo | None = app.get_run(run_id).wait(timeout, on_update=progress)
    except TimeoutError:
        info = None
    finally:
        progress.close()
        app.close()
    if info is None:
        click.echo(f"Error: run {run_id} had not finished after {timeout:g}s", err=True)
        sys.exit(1)
    if as_json:
        print_json(dataclasses.asdict(info))
    elif info.status == "succeeded":
        click.echo(f"run {run_id} {status_text(info.status)}: {json.dumps(info.result)}")
    if info.status != "succeeded":
        error = info.error or {}
        click.echo(f"Error: run {run_id} {info.status}: {error.get('type')}: {error.get('message')}", err=True)
        sys.exit(1)
