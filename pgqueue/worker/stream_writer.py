"""Writing the streamed chunks and progress of all runs of a worker in batches.

`ctx.stream(chunk)` only queues the chunk (from the event loop or a sync task's thread) and
returns; the writer sends what is queued in one statement, and what arrives meanwhile goes in
the next: at a low rate each chunk is written at once, at a high rate hundreds share a commit.
A run's latest progress rides along (older progress not yet written is replaced). The writes are
fenced in SQL (`pgqueue.write_stream`): chunks of an attempt that no longer holds its run are
dropped. A run's chunks are flushed before it suspends and before its outcome is recorded, so
that a reader who sees the run final has seen all of them.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass, field
from typing import Any

from ..database import CONNECTION_ERRORS, Database
from ..errors import DatabaseInterrupted, InputTooLarge, PgQueueError, StreamLimitExceeded
from ..ops import Op, statement

log = logging.getLogger("pgqueue.worker")

#: most chunks per statement
MAX_BATCH = 2000

_Key = tuple[int, int]  # (run id, attempt)


@dataclass
class _Attempt:
    """The stream of one attempt, as the writer sees it."""

    queued: int = 0     # chunks handed in
    processed: int = 0  # chunks whose write is over (written or refused)
    error: Exception | None = None
    taken_over: bool = False
    waiters: list[tuple[int, asyncio.Future[None]]] = field(default_factory=list)


class StreamWriter:
    """Queues chunks and progress and writes them in batches (a `streams.StreamSink`)."""

    def __init__(self, db: Database, worker_id: str, max_chunk_bytes: int, max_chunks: int) -> None:
        self.db = db
        self.worker_id = worker_id
        self.max_chunk_bytes = max_chunk_bytes
        self.max_chunks = max_chunks
        self._loop = asyncio.get_running_loop()
        self._lock = threading.Lock()  # chunks come from sync tasks' threads too
        self._chunks: list[tuple[int, int, str]] = []
        self._progress: dict[_Key, tuple[float, float | None, str | None]] = {}
        self._attempts: dict[_Key, _Attempt] = {}
        self._arrived = asyncio.Event()
        self._woken = False

    # -- from tasks (any thread) -------------------------------------------------------------

    def add(self, run_id: int, attempt: int, text: str) -> None:
        with self._lock:
            state = self._attempts.setdefault((run_id, attempt), _Attempt())
            if state.error is not None:
                raise state.error
            if state.taken_over:
                return
            state.queued += 1
            self._chunks.append((run_id, attempt, text))
            wake, self._woken = not self._woken, True
        if wake:
            self._loop.call_soon_threadsafe(self._arrived.set)

    def set_progress(self, run_id: int, attempt: int, done: float, total: float | None,
                     message: str | None) -> None:
        with self._lock:
            self._progress[(run_id, attempt)] = (done, total, message)
            wake, self._woken = not self._woken, True
        if wake:
            self._loop.call_soon_threadsafe(self._arrived.set)

    async def flush(self, run_id: int, attempt: int) -> None:
        """Wait until every chunk and progress the attempt handed in is written (or refused);
        raise what refused them."""
        key = (run_id, attempt)
        with self._lock:
            state = self._attempts.get(key)
            if state is None and key not in self._progress:
                return
            state = self._attempts.setdefault(key, _Attempt())
            if state.processed < state.queued or key in self._progress:
                done: asyncio.Future[None] = self._loop.create_future()
                state.waiters.append((state.queued, done))
            else:
                done = self._loop.create_future()
                done.set_result(None)
        self._arrived.set()
        await done
        if state.error is not None:
            raise state.error

    def flush_sync(self, run_id: int, attempt: int) -> None:
        with self._lock:
            state = self._attempts.get((run_id, attempt))
            idle = (run_id, attempt) not in self._progress and (state is None or state.processed >= state.queued)
        if idle:
            if state is not None and state.error is not None:
                raise state.error
            return
        try:
            on_loop = asyncio.get_running_loop() is self._loop
        except RuntimeError:
            on_loop = False
        if on_loop:  # waiting here would block the loop that writes the chunks
            raise PgQueueError("a sync step or flush_stream_sync() in an async task would wait for the stream on "
                               "the event loop it blocks; use await ctx.step(...) / await ctx.flush_stream()")
        asyncio.run_coroutine_threadsafe(self.flush(run_id, attempt), self._loop).result()

    async def finish(self, run_id: int, attempt: int) -> None:
        """The attempt is over: write what it left, then forget it."""
        try:
            await self.flush(run_id, attempt)
        except Exception as exc:  # the task already saw it, or ended before it could
            log.warning("run %d: part of the stream of attempt %d was not written: %s", run_id, attempt, exc)
        finally:
            with self._lock:
                self._attempts.pop((run_id, attempt), None)

    # -- the writer (event loop) -------------------------------------------------------------

    async def serve(self) -> None:
        while True:
            await self._arrived.wait()
            self._arrived.clear()
            while True:
                with self._lock:
                    self._woken = False
                    batch = self._chunks[:MAX_BATCH]
                    del self._chunks[:MAX_BATCH]
                    progress, self._progress = self._progress, {}
                if batch or progress:
                    await self._write(batch, progress)
                self._release_waiters()
                if not batch and not progress:
                    break

    async def _write(self, batch: list[tuple[int, int, str]], progress: dict[_Key, Any]) -> None:
        counts: dict[_Key, int] = {}
        for run_id, attempt, _ in batch:
            counts[(run_id, attempt)] = counts.get((run_id, attempt), 0) + 1
        try:
            rows = await self.db.execute_async(write_op(self.worker_id, batch, progress), transaction=True)
        except Exception as exc:
            error: Exception = exc
            if isinstance(exc, CONNECTION_ERRORS):
                error = DatabaseInterrupted(f"a run's stream could not be written ({type(exc).__name__}: {exc}); "
                                            "the run is retried without counting a failure")
            log.warning("could not write %d stream chunk(s) of %d run(s): %s", len(batch), len(counts), exc)
            rows = []
            with self._lock:
                for key in counts.keys() | progress.keys():
                    self._attempts.setdefault(key, _Attempt()).error = error
        with self._lock:
            for row in rows:
                state = self._attempts.setdefault((row["run_id"], row["attempt"]), _Attempt())
                if row["taken_over"]:
                    state.taken_over = True
                elif row["too_many"] and state.error is None:
                    state.error = StreamLimitExceeded(
                        f"run {row['run_id']} streamed more than {self.max_chunks} chunks; the rest of its stream "
                        "was dropped. Stream larger pieces, or raise the limit (as the schema owner): UPDATE "
                        "pgqueue.settings SET value = <n> WHERE name = 'max_stream_chunks'")
                elif row["too_large"] and state.error is None:
                    state.error = InputTooLarge(
                        f"run {row['run_id']}: {row['too_large']} stream chunk(s) over the database's limit of "
                        "max_stream_chunk_bytes (or nested too deeply) were dropped")
            for key, n in counts.items():
                self._attempts.setdefault(key, _Attempt()).processed += n

    def _release_waiters(self) -> None:
        with self._lock:
            for key, state in self._attempts.items():
                if not state.waiters or key in self._progress:
                    continue
                still = []
                for target, done in state.waiters:
                    if state.processed >= target or state.error is not None:
                        if not done.done():
                            done.set_result(None)
                    else:
                        still.append((target, done))
                state.waiters = still


def write_op(worker_id: str, batch: list[tuple[int, int, str]],
             progress: dict[_Key, tuple[float, float | None, str | None]]) -> Op[list[dict[str, Any]]]:
    """Chunks, then progress, each fenced by run, attempt and worker (one transaction)."""
    rows: list[dict[str, Any]] = []
    if batch:
        rows = yield statement("streams.write", {
            "worker": worker_id, "runs": [c[0] for c in batch], "attempts": [c[1] for c in batch],
            "chunks": [c[2] for c in batch]}, row=dict)
    if progress:
        keys = list(progress)
        yield statement("streams.write_progress", {
            "worker": worker_id, "runs": [k[0] for k in keys], "attempts": [k[1] for k in keys],
            "done": [progress[k][0] for k in keys], "total": [progress[k][1] for k in keys],
            "message": [progress[k][2] for k in keys]})
    return rows


def limits_op() -> Op[tuple[int, int]]:
    """The database's stream limits: (bytes per chunk, chunks per run)."""
    rows = yield statement("streams.limits", row=dict)
    return int(rows[0]["chunk_bytes"]), int(rows[0]["chunks"])
