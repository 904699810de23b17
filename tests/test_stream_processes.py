"""Streams across a worker SIGKILL: real `pgqueue worker` processes, a reader following along."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import bind
from pgqueue.streams import Chunk
from processes import FAST, Workers, sql, wait_until

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]


@pytest.fixture
def stream_app(dsn: str) -> Iterator[Any]:
    import stream_app

    bind(stream_app.app, dsn)
    yield stream_app
    bind(stream_app.app, None)


@pytest.fixture
def workers(dsn: str, stream_app: Any, tmp_path: Path) -> Iterator[Workers]:
    group = Workers(dsn, tmp_path, app="stream_app:app")
    yield group
    group.stop_all()


def stored(dsn: str, run_id: int) -> list[tuple[int, int, Any]]:
    return sql(dsn, 'SELECT "offset", attempt, data FROM pgqueue.stream_chunks WHERE run_id = %s ORDER BY "offset"',
               (run_id,))


def test_chunks_are_delivered_once_in_order_across_a_worker_sigkill(stream_app: Any, workers: Workers,
                                                                   dsn: str) -> None:
    n = 60
    handle = stream_app.tokens.enqueue(n=n, pause=0.05)
    got: list[Chunk] = []
    reader = threading.Thread(target=lambda: got.extend(handle.stream(timeout=240)))
    reader.start()  # joins before the run starts, follows it through the crash to the end
    victim = workers.start("--concurrency", "4", *FAST)
    wait_until(lambda: len(stored(dsn, handle.id)) >= 15, what="the first attempt's chunks")
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    first = stored(dsn, handle.id)
    workers.start("--concurrency", "4", *FAST)
    reader.join(240)
    assert not reader.is_alive()
    assert handle.result(timeout=60) == n

    everything = stored(dsn, handle.id)
    k = len(first)
    # what the killed attempt committed stays, in order; the retry's chunks follow it
    assert everything[:k] == first and {a for _, a, _ in first} == {1}
    assert [d for _, _, d in first] == [f"t{i} " for i in range(k)]
    assert everything[k:] == [(k + i, 2, f"t{i} ") for i in range(n)]
    # the reader got every stored chunk exactly once, in order, across the crash
    assert [(c.offset, c.attempt, c.data) for c in got] == everything
    # late readers: from the start, and from where the retry began
    assert [(c.offset, c.attempt, c.data) for c in handle.stream()] == everything
    assert [c.data for c in handle.stream(k)] == [f"t{i} " for i in range(n)]
    progress = handle.progress()
    assert progress is not None and (progress.done, progress.total, progress.attempt) == (n, n, 2)
