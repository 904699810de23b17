"""`pgqueue runs tail ID`: print what a run streams, as it comes."""

from __future__ import annotations

import json
import re
import sys

import click

from pgqueue import PgQueue
from pgqueue.status import RunStatus
from pgqueue.streams import Chunk, Progress, read_chunks_op, stream_state_op

from .common import dsn_option, friendly_errors

# terminal control characters a stored chunk may hold, newline and tab excepted: shown escaped,
# so that streamed text cannot restyle or rewrite the screen
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def render_chunk(chunk: Chunk, as_json: bool) -> str:
    """A chunk as printed: a str as it is (LLM tokens make up the text), any other value as a
    line of JSON; with --json, every chunk as a line {offset, attempt, data}."""
    if as_json:
        return json.dumps({"offset": chunk.offset, "attempt": chunk.attempt, "data": chunk.data}) + "\n"
    if isinstance(chunk.data, str):
        return printable(chunk.data)
    return json.dumps(chunk.data) + "\n"


def progress_text(progress: Progress) -> str:
    amount = f"{progress.done:g}/{progress.total:g}" if progress.total is not None else f"{progress.done:g}"
    if progress.fraction is not None:
        amount += f" ({100 * progress.fraction:.0f}%)"
    message = f"  {printable(progress.message)}" if progress.message else ""
    return f"{amount}{message}  (attempt {progress.attempt}, {progress.at:%Y-%m-%d %H:%M:%S})"


@click.command("tail")
@click.argument("run_id", type=int)
@click.option("--from", "offset", type=click.IntRange(min=0), default=0, show_default=True,
              help="First offset to print (0: the whole stream; a reader that left at offset N resumes "
                   "with N + 1).")
@click.option("--follow/--no-follow", default=True, show_default=True,
              help="Keep printing until the run is final, or print what is stored and exit.")
@click.option("--timeout", type=float, default=None, help="Give up after this many seconds (exit status 2).")
@click.option("--json", "as_json", is_flag=True, help="One JSON line per chunk: offset, attempt, data.")
@dsn_option
@friendly_errors
def tail_cmd(run_id: int, offset: int, follow: bool, timeout: float | None, as_json: bool, dsn: str | None) -> None:
    """Print the output run RUN_ID streams (`ctx.stream`), from its start, as it comes; exits
    once the run is final (status 0 if it succeeded, 1 otherwise). A retried run's stream holds
    each attempt's chunks in turn: a line on stderr marks where a new attempt begins."""
    with PgQueue(dsn) as app:
        attempt = None
        if follow:
            chunks = app.get_run(run_id).stream(offset, timeout=timeout)
        else:
            chunks = iter(app.db.execute(read_chunks_op(run_id, offset, limit=1_000_000)))
        try:
            for chunk in chunks:
                if not as_json and attempt is not None and chunk.attempt != attempt:
                    click.echo(f"\n--- attempt {chunk.attempt} ---", err=True)
                attempt = chunk.attempt
                sys.stdout.write(render_chunk(chunk, as_json))
                sys.stdout.flush()
        except TimeoutError:
            click.echo(f"\nrun {run_id}: still streaming after {timeout:g}s", err=True)
            sys.exit(2)
        state = app.db.execute(stream_state_op(run_id))
    if not follow:
        return
    if state.status != RunStatus.SUCCEEDED:
        click.echo(f"\nrun {run_id} ended {state.status}", err=True)
        sys.exit(1)
