"""Streamed output and progress of runs: what a reader sees, and reading it from any offset.

A run streams chunks (`ctx.stream(chunk)`: a str or any JSON value) and reports progress
(`ctx.progress(done, total, message)`); the worker writes both in batches
(`worker/stream_writer.py`, through `pgqueue.write_stream` / `pgqueue.write_progress`). A run's
chunks have offsets 0, 1, 2, ... across all its attempts: a retried attempt appends after what
the earlier attempts wrote, each chunk carrying the attempt that wrote it. Readers replay from
any offset and follow the stream until the run is final (`handles.py`, the CLI's `runs tail`,
the dashboard's `/runs/<id>/stream`). The decisions of following live in `Following`, which
does no I/O.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from .codec import check_stored
from .database import DONE_CHANNEL
from .errors import InvalidInput
from .ops import Op, statement
from .runs import get_run_op
from .status import RunStatus

#: chunks read per round trip
PAGE = 1000
#: characters of a progress message kept (longer ones are cut by the database)
MAX_PROGRESS_MESSAGE = 1000

_FIRST_POLL = 0.05  # seconds to wait for a signal before reading again; doubles up to:
_MAX_POLL = 1.0


def stream_channel(run_id: int) -> str:
    """The NOTIFY channel of a run's stream (the same as SQL's `pgqueue.stream_channel`)."""
    return f"pgqueue_stream_{int(run_id)}"


def reader_channels(run_id: int) -> tuple[str, str]:
    """What a reader listens to: the run's stream, and the completion of runs."""
    return stream_channel(run_id), DONE_CHANNEL


@dataclass(frozen=True)
class Chunk:
    """One chunk of a run's stream."""

    #: its place in the run's stream: 0, 1, 2, ... over all attempts; resume after it with offset + 1
    offset: int
    #: the attempt that streamed it
    attempt: int
    #: what the run streamed: a str, or the JSON value it passed
    data: Any
    created_at: datetime


@dataclass(frozen=True)
class Progress:
    """The latest progress a run reported (`ctx.progress`)."""

    done: float
    total: float | None
    message: str | None
    attempt: int
    at: datetime

    @property
    def fraction(self) -> float | None:
        """done / total, when the total is known and not zero."""
        return self.done / self.total if self.total else None


@dataclass(frozen=True)
class StreamState:
    """A read of a run's stream head: its status, length and progress."""

    status: RunStatus
    chunks: int
    progress: Progress | None

    @property
    def final(self) -> bool:
        return self.status.final


def encode_chunk(chunk: Any, max_bytes: int) -> str:
    """The JSON text stored for CHUNK, or a clear InvalidInput / InputTooLarge."""
    try:
        text = json.dumps(chunk, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"a stream chunk must be a str or a JSON value (dict, list, number, bool, None): "
                           f"{exc}") from None
    return check_stored(text, "a stream chunk", max_bytes)


def check_progress(done: float, total: float | None, message: str | None) -> None:
    """Refuse progress that cannot be stored as given."""
    for name, value in (("done", done), ("total", total)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or value != value or value in (float("inf"), float("-inf"))):
            raise InvalidInput(f"progress {name} must be a finite number, got {value!r}")
    if message is not None and not isinstance(message, str):
        raise InvalidInput(f"a progress message must be a str, got {type(message).__name__}")
    if message is not None and len(message) > MAX_PROGRESS_MESSAGE:
        raise InvalidInput(f"a progress message is at most {MAX_PROGRESS_MESSAGE} characters "
                           f"(got {len(message)}); put long text in the stream instead")


def stream_state_op(run_id: int) -> Op[StreamState]:
    """The run's status, stream length and progress; RunNotFound for an unknown run."""
    rows = yield statement("streams.state", (run_id,), row=dict)
    if not rows:
        yield from get_run_op(run_id)  # raises RunNotFound, saying whether retention pruned it
        raise AssertionError("unreachable")
    row = rows[0]
    progress = None
    if row["progress_at"] is not None:
        progress = Progress(row["progress_done"], row["progress_total"], row["progress_message"],
                            row["attempt"], row["progress_at"])
    return StreamState(RunStatus(row["status"]), row["chunks"], progress)


def read_chunks_op(run_id: int, offset: int, limit: int = PAGE) -> Op[list[Chunk]]:
    """Up to `limit` chunks of the run's stream from `offset`, in order."""
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise InvalidInput(f"a stream offset must be an int of 0 or more (got {offset!r}); 0 reads from the start")
    rows = yield statement("streams.read", {"run": run_id, "offset": offset, "limit": limit}, row=Chunk)
    return list(rows)


@dataclass(frozen=True)
class Page:
    """What one read of a followed stream found."""

    chunks: list[Chunk]
    #: the run was final before the chunks were read, and they were all of them
    ended: bool
    #: the run's status and progress, read just before the chunks
    state: StreamState


def follow_op(run_id: int, offset: int) -> Op[Page]:
    """The next page of chunks from `offset`. The state is read before the chunks: a worker
    commits a run's chunks before its outcome, so a run seen final has all its chunks visible."""
    state = yield from stream_state_op(run_id)
    chunks = yield from read_chunks_op(run_id, offset)
    return Page(chunks, state.final and len(chunks) < PAGE, state)


class Following:
    """Where a reader is in a stream, and how long to listen before reading again."""

    def __init__(self, offset: int, timeout: float | None) -> None:
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise InvalidInput(f"a stream offset must be an int of 0 or more (got {offset!r}); "
                               "0 reads from the start")
        self.offset = offset
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.poll = _FIRST_POLL

    def took(self, page: Page) -> list[Chunk]:
        if page.chunks:
            self.offset = page.chunks[-1].offset + 1
            self.poll = _FIRST_POLL
        return page.chunks

    def wait(self, page: Page) -> float | None:
        """Seconds to listen for a signal before reading again: 0 when there is more to read
        now, None when the stream has ended."""
        if page.ended:
            return None
        if len(page.chunks) >= PAGE:
            return 0.0
        wait = self.poll
        if self.deadline is not None:
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("the run's stream did not end in time")
            wait = min(wait, remaining)
        self.poll = min(_MAX_POLL, self.poll * 2)
        return wait


class StreamSink(Protocol):
    """Takes the chunks and progress of running runs (the worker's stream writer)."""

    max_chunk_bytes: int

    def add(self, run_id: int, attempt: int, text: str) -> None: ...

    def set_progress(self, run_id: int, attempt: int, done: float, total: float | None,
                     message: str | None) -> None: ...

    async def flush(self, run_id: int, attempt: int) -> None: ...

    def flush_sync(self, run_id: int, attempt: int) -> None: ...
