"""Server-Sent Events of a run's stream (`GET /runs/<id>/stream`), for both servers.

`routes.py` checks the request (access, the run, the offset) like any page and answers a
`Response` carrying an `EventStream`; the standard library's server then writes `sync_events`
from its thread, the ASGI adapter sends `async_events` from the event loop (so that an open
stream holds none of its page threads). The events:

- `chunk`: `{"offset", "attempt", "data"}`, with `id: <offset>`, so that a browser's EventSource
  reconnecting sends `Last-Event-ID` and resumes after the last chunk it got;
- `progress`: `{"done", "total", "message", "attempt"}` whenever the run's progress changed;
- `end`: `{"status"}` once the run is final and every chunk was sent; the client should close.

A connection is held at most `MAX_SECONDS`; then the server closes it and the browser reconnects
from where it was (a run that never ends holds no thread and no connection for ever).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Generator
from dataclasses import asdict, dataclass
from typing import Any

from ..database import Database
from ..handles import AsyncRunHandle, RunHandle
from ..streams import Page, Progress

CONTENT_TYPE = "text/event-stream; charset=utf-8"
#: seconds one connection follows a stream before the server closes it (the browser reconnects)
MAX_SECONDS = 300.0
#: seconds without an event after which a comment is sent: proxies keep the connection, and a
#: client that went away is noticed
KEEPALIVE = 15.0
#: what a browser waits before reconnecting (ms)
RETRY_MS = 2000


@dataclass(frozen=True)
class EventStream:
    """The stream a request asked for: run, and the first offset to send."""

    run_id: int
    offset: int


def first_offset(query: dict[str, str], headers: dict[str, str] | Any) -> int:
    """Where to start: after `Last-Event-ID` (a reconnecting EventSource), else `?offset=`, else 0.
    ValueError for a value that is not a non-negative integer."""
    last = headers.get("last-event-id")
    if last:
        value = last.strip()
        if not value.isascii() or not value.isdigit():
            raise ValueError(f"Last-Event-ID must be a chunk offset, not {value[:20]!r}")
        return int(value) + 1
    value = query.get("offset", "0").strip()
    if not value.isascii() or not value.isdigit():
        raise ValueError(f"offset must be an integer of 0 or more, not {value[:20]!r}")
    return int(value)


class _Encoder:
    """Turns pages into event bytes; remembers the progress sent and when it last sent anything."""

    def __init__(self) -> None:
        self.progress: Progress | None = None
        self.last_sent = time.monotonic()

    def start(self) -> bytes:
        return f"retry: {RETRY_MS}\n\n".encode()

    def page(self, page: Page) -> bytes:
        parts = [f"id: {c.offset}\nevent: chunk\ndata: "
                 + json.dumps({"offset": c.offset, "attempt": c.attempt, "data": c.data}) + "\n\n"
                 for c in page.chunks]
        progress = page.state.progress
        if progress is not None and progress != self.progress:
            self.progress = progress
            fields = {k: v for k, v in asdict(progress).items() if k != "at"}
            parts.append("event: progress\ndata: " + json.dumps(fields) + "\n\n")
        if page.ended:
            parts.append("event: end\ndata: " + json.dumps({"status": str(page.state.status)}) + "\n\n")
        if not parts and time.monotonic() - self.last_sent >= KEEPALIVE:
            parts.append(": keepalive\n\n")
        if parts:
            self.last_sent = time.monotonic()
        return "".join(parts).encode()


def sync_events(db: Database, stream: EventStream) -> Generator[bytes, None, None]:
    """The events, for a server that writes from a thread of its own."""
    encoder = _Encoder()
    yield encoder.start()
    try:
        for page in RunHandle(db, stream.run_id).follow(stream.offset, timeout=MAX_SECONDS):
            if data := encoder.page(page):
                yield data
    except TimeoutError:
        return  # held long enough: the browser reconnects after the last chunk


async def async_events(db: Database, stream: EventStream) -> AsyncIterator[bytes]:
    """The events, for the event loop of an ASGI server."""
    encoder = _Encoder()
    yield encoder.start()
    try:
        async for page in AsyncRunHandle(db, stream.run_id).follow(stream.offset, timeout=MAX_SECONDS):
            if data := encoder.page(page):
                yield data
    except TimeoutError:
        return
