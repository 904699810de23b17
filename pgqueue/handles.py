"""Handles on runs: read a run's state and wait for its outcome, from sync or async code.

Waiting listens for the workers' completion signal and reads the run after each one (and at
least every second, in case a signal is lost; only that when listening is off, as behind a
transaction pooler without a direct `listen_dsn`). The decisions of waiting live in `_Waiting`;
the two handle classes only block or await.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from .codec import decoded
from .database import DONE_CHANNEL
from .errors import RunFailed
from .messages import get_state_op
from .runs import RunInfo, get_run_op
from .status import RunStatus
from .streams import Chunk, Following, Page, Progress, follow_op, reader_channels, stream_state_op

if TYPE_CHECKING:
    from .database import Database

R = TypeVar("R")

_FIRST_POLL = 0.05  # seconds before the first re-read when no signal arrives; doubles up to:
_MAX_POLL = 1.0


class _Waiting:
    """How long to listen before reading the run again, until it is done or time is up."""

    def __init__(self, timeout: float | None, on_update: Callable[[RunInfo], None] | None) -> None:
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.on_update = on_update
        self.poll = _FIRST_POLL

    def after(self, info: RunInfo) -> float | None:
        """Seconds to listen for the next signal; None when the run is done."""
        if self.on_update is not None:
            self.on_update(info)
        if info.done:
            return None
        wait = self.poll
        if self.deadline is not None:
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("the run did not finish in time")
            wait = min(wait, remaining)
        self.poll = min(_MAX_POLL, self.poll * 2)
        return wait


class _HandleBase(Generic[R]):
    def __init__(self, db: Database, run_id: int, created: bool = True,
                 decode: Callable[[Any], Any] | None = None) -> None:
        self.db = db
        self.id = run_id
        #: False when an idempotency key matched an existing run, which this handle points to.
        self.created = created
        self._decode = decode

    def __repr__(self) -> str:
        return f"<{type(self).__name__} run {self.id}>"

    def _outcome(self, info: RunInfo) -> R:
        if info.status != RunStatus.SUCCEEDED:
            raise RunFailed(info.id, info.status, info.error)
        result = decoded(info.result)
        return self._decode(result) if self._decode else result  # type: ignore[no-any-return]


class RunHandle(_HandleBase[R]):
    """A run, seen from sync code."""

    def info(self) -> RunInfo:
        return self.db.execute(get_run_op(self.id))

    def status(self) -> RunStatus:
        return self.info().status

    def result(self, timeout: float | None = None) -> R:
        """Wait for the run to finish; return its result or raise RunFailed / TimeoutError."""
        return self._outcome(self.wait(timeout))

    def wait(self, timeout: float | None = None, on_update: Callable[[RunInfo], None] | None = None) -> RunInfo:
        """Wait for the run to finish and return its final state, whatever the outcome
        (TimeoutError after `timeout` seconds). `on_update` gets every state read meanwhile,
        e.g. to show the children done."""
        waiting = _Waiting(timeout, on_update)
        with self.db.listen(DONE_CHANNEL) as conn:
            while True:
                info = self.info()
                if (wait := waiting.after(info)) is None:
                    return info
                if conn is None:  # listening is off: poll
                    time.sleep(wait)
                    continue
                for _ in conn.notifies(timeout=wait, stop_after=1):
                    pass

    def progress(self) -> Progress | None:
        """The latest progress the run reported (`ctx.progress`), or None."""
        return self.db.execute(stream_state_op(self.id)).progress

    def state(self) -> Any:
        """The state the run published last (`ctx.set_state`), None if none; never wakes the run."""
        return self.db.execute(get_state_op(self.id)).state

    def stream(self, offset: int = 0, *, timeout: float | None = None) -> Iterator[Chunk]:
        """The chunks the run streams (`ctx.stream`), from `offset` (0: from the start, also
        for a run that already finished), as they come; ends once the run is final and every
        chunk was given. Each chunk carries its attempt: a retried run's stream holds the
        earlier attempts' chunks, then the new attempt's. To resume after a disconnect, pass
        the last chunk's offset + 1. TimeoutError after `timeout` seconds."""
        for page in self.follow(offset, timeout=timeout):
            yield from page.chunks

    def follow(self, offset: int = 0, *, timeout: float | None = None) -> Iterator[Page]:
        """`stream` page by page, each with the run's status and progress read with it (also
        pages without chunks, at each signal or poll): for readers that show progress too."""
        following = Following(offset, timeout)
        with self.db.listen(*reader_channels(self.id)) as conn:
            while True:
                page = self.db.execute(follow_op(self.id, following.offset))
                following.took(page)
                yield page
                if (wait := following.wait(page)) is None:
                    return
                if wait and conn is None:  # listening is off (PGQUEUE_LISTEN_DSN=off): poll
                    time.sleep(wait)
                elif wait and conn is not None:
                    for _ in conn.notifies(timeout=wait, stop_after=1):
                        pass


class AsyncRunHandle(_HandleBase[R]):
    """A run, seen from async code: the methods of `RunHandle`, awaited."""

    async def info(self) -> RunInfo:
        return await self.db.execute_async(get_run_op(self.id))

    async def status(self) -> RunStatus:
        return (await self.info()).status

    async def result(self, timeout: float | None = None) -> R:
        return self._outcome(await self.wait(timeout))

    async def wait(self, timeout: float | None = None,
                   on_update: Callable[[RunInfo], None] | None = None) -> RunInfo:
        waiting = _Waiting(timeout, on_update)
        async with self.db.listen_async(DONE_CHANNEL) as conn:
            while True:
                info = await self.info()
                if (wait := waiting.after(info)) is None:
                    return info
                if conn is None:
                    await asyncio.sleep(wait)
                    continue
                async for _ in conn.notifies(timeout=wait, stop_after=1):
                    pass

    async def progress(self) -> Progress | None:
        return (await self.db.execute_async(stream_state_op(self.id))).progress

    async def state(self) -> Any:
        return (await self.db.execute_async(get_state_op(self.id))).state

    async def stream(self, offset: int = 0, *, timeout: float | None = None) -> AsyncIterator[Chunk]:
        """`RunHandle.stream` as an async iterator: `async for chunk in handle.stream(): ...`."""
        async for page in self.follow(offset, timeout=timeout):
            for chunk in page.chunks:
                yield chunk

    async def follow(self, offset: int = 0, *, timeout: float | None = None) -> AsyncIterator[Page]:
        """`RunHandle.follow` as an async iterator."""
        following = Following(offset, timeout)
        async with self.db.listen_async(*reader_channels(self.id)) as conn:
            while True:
                page = await self.db.execute_async(follow_op(self.id, following.offset))
                following.took(page)
                yield page
                if (wait := following.wait(page)) is None:
                    return
                if wait and conn is None:
                    await asyncio.sleep(wait)
                elif wait and conn is not None:
                    async for _ in conn.notifies(timeout=wait, stop_after=1):
                        pass
