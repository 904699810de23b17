"""Streaming and progress in-process: order, readers from an offset, limits, progress."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from conftest import bind, running_worker
from pgqueue import PgQueue
from pgqueue.dashboard.sse import first_offset
from pgqueue.errors import InputTooLarge, InvalidInput, RunNotFound
from pgqueue.sqlfiles import query
from pgqueue.streams import Chunk, check_progress, encode_chunk
from pgqueue.testing import call
from pgqueue_cli.tail_cmd import printable

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def streams(dsn: str) -> Iterator[Any]:
    import stream_app

    bind(stream_app.app, dsn)
    yield stream_app
    bind(stream_app.app, None)


def stored(dsn: str, run_id: int) -> list[tuple[int, int, Any]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute('SELECT "offset", attempt, data FROM pgqueue.stream_chunks WHERE run_id = %s'
                            ' ORDER BY "offset"', (run_id,)).fetchall()


def triples(chunks: list[Chunk]) -> list[tuple[int, int, Any]]:
    return [(c.offset, c.attempt, c.data) for c in chunks]


async def test_a_reader_following_a_run_gets_every_chunk_in_order(streams: Any, dsn: str) -> None:
    handle = await streams.tokens.enqueue_async(n=200, pause=0.002)
    got: list[Chunk] = []
    async with running_worker(streams.app):
        reading = asyncio.create_task(_collect(handle.stream(), got))
        assert await handle.result(timeout=30) == 200
        await asyncio.wait_for(reading, 30)  # ends by itself once the run is final
    assert [c.data for c in got] == [f"t{i} " for i in range(200)]
    assert [c.offset for c in got] == list(range(200)) and {c.attempt for c in got} == {1}
    assert triples(got) == stored(dsn, handle.id)
    progress = await handle.progress()
    assert progress is not None
    assert (progress.done, progress.total, progress.message) == (200, 200, "token 200 of 200")
    assert progress.fraction == 1.0


async def _collect(chunks: Any, into: list[Chunk]) -> None:
    async for chunk in chunks:
        into.append(chunk)


async def test_late_readers_replay_from_the_start_or_an_offset(streams: Any, dsn: str) -> None:
    handle = streams.json_chunks.enqueue(n=50)
    async with running_worker(streams.app):
        await asyncio.to_thread(handle.result, 30)
    expected = [{"i": i, "partial": [i] * (i % 3)} for i in range(50)]
    everything = await asyncio.to_thread(lambda: list(handle.stream()))
    assert [c.data for c in everything] == expected
    suffix = await asyncio.to_thread(lambda: list(handle.stream(37)))
    assert [c.offset for c in suffix] == list(range(37, 50)) and [c.data for c in suffix] == expected[37:]
    assert await asyncio.to_thread(lambda: list(handle.stream(50))) == []
    progress = handle.progress()
    assert progress is not None and (progress.done, progress.total, progress.message) == (50, None, "all sent")
    assert progress.fraction is None


async def test_chunks_streamed_before_a_durable_sleep_are_kept(streams: Any) -> None:
    handle = await streams.stream_around_sleep.enqueue_async(n=3)
    async with running_worker(streams.app):
        assert await handle.result(timeout=30) == "ok"
    chunks = [c async for c in handle.stream()]
    # the run executed twice (before and after its sleep); the replay streams its first part again
    assert [c.data for c in chunks] == ["before 0", "before 1", "before 2",
                                        "before 0", "before 1", "before 2", "after"]
    assert [c.offset for c in chunks] == list(range(7))


async def test_what_a_step_streams_is_stored_once_replays_skip_it(streams: Any) -> None:
    handle = await streams.stream_in_step.enqueue_async(n=3)
    async with running_worker(streams.app):
        assert await handle.result(timeout=30) == "ok"
    chunks = [c async for c in handle.stream()]
    # execution 1: body, the step's chunks (stored before its checkpoint), sleep; execution 2
    # replays: the body streams again, the completed step does not run
    assert [(c.attempt, c.data) for c in chunks] == [(1, "body"), (1, "step 0"), (1, "step 1"), (1, "step 2"),
                                                     (2, "body")]


def test_testing_call_streams_like_a_worker(streams: Any, dsn: str) -> None:
    assert call(streams.app, streams.json_chunks, n=4) == 4
    with psycopg.connect(dsn) as conn:
        [(run_id,)] = conn.execute("SELECT max(id) FROM pgqueue.runs WHERE task = 'json_chunks'").fetchall()
    assert [d for _, _, d in stored(dsn, run_id)] == [{"i": i, "partial": [i] * (i % 3)} for i in range(4)]
    progress = streams.app.get_run(run_id).progress()
    assert progress is not None and progress.message == "all sent"


async def test_sync_task_chunks_from_its_thread(streams: Any) -> None:
    handle = await streams.sync_tokens.enqueue_async(n=300)
    async with running_worker(streams.app, concurrency=2):
        assert await handle.result(timeout=30) == 300
    assert [c.data async for c in handle.stream()] == [f"t{i} " for i in range(300)]


async def test_an_oversized_chunk_fails_the_run_with_a_clear_error(streams: Any) -> None:
    handle = await streams.oversized.enqueue_async(size=70_000)
    async with running_worker(streams.app):
        info = await handle.wait(timeout=30)
    assert info.status == "failed"
    assert info.error is not None and info.error["type"] == "InputTooLarge"
    assert "a stream chunk is 70002 bytes, over the limit of 65536 bytes" in info.error["message"]
    assert [c.data async for c in handle.stream()] == ["small"]  # what came before it is kept


async def test_chunks_per_run_are_bounded_by_the_database(streams: Any, dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("UPDATE pgqueue.settings SET value = 10 WHERE name = 'max_stream_chunks'")
    try:
        handle = await streams.many.enqueue_async(n=25)
        async with running_worker(streams.app):
            info = await handle.wait(timeout=30)
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("UPDATE pgqueue.settings SET value = 100000 WHERE name = 'max_stream_chunks'")
    assert info.status == "failed" and info.error is not None
    assert info.error["type"] == "StreamLimitExceeded"
    assert "streamed more than 10 chunks" in info.error["message"]
    assert [c.data async for c in handle.stream()] == list(range(10))


def test_unknown_run_and_bad_offset_get_clear_errors(app: PgQueue) -> None:
    with pytest.raises(RunNotFound, match="no run with id 987654321"):
        list(app.get_run(987654321).stream())
    with pytest.raises(RunNotFound):
        app.get_run(987654321).progress()
    with psycopg.connect(app.dsn) as conn, pytest.raises(psycopg.Error, match="no run with id 987654321"):
        conn.execute("SELECT * FROM pgqueue.read_stream(987654321)")


def test_negative_offset_is_refused(streams: Any) -> None:
    handle = streams.json_chunks.enqueue(n=1)
    with pytest.raises(InvalidInput, match="offset must be an int of 0 or more"):
        list(handle.stream(-1))


async def test_a_reader_times_out_on_a_run_that_does_not_end(streams: Any) -> None:
    handle = await streams.tokens.enqueue_async(n=1)  # no worker: it never starts
    with pytest.raises(TimeoutError):
        async for _ in handle.stream(timeout=0.3):
            pass


def test_a_sync_reader_in_a_thread_follows_the_stream(streams: Any) -> None:
    handle = streams.tokens.enqueue(n=100, pause=0.005)
    got: list[Chunk] = []
    reader = threading.Thread(target=lambda: got.extend(handle.stream(timeout=60)))
    reader.start()

    async def work() -> None:
        async with running_worker(streams.app):
            await asyncio.to_thread(handle.result, 30)
    asyncio.run(work())
    reader.join(60)
    assert not reader.is_alive()
    assert [c.data for c in got] == [f"t{i} " for i in range(100)]


# -- the fence: a zombie attempt writes nothing ------------------------------------------------

FENCE_QUEUE = "stream_fences"


def _claimed(conn: psycopg.Connection[Any]) -> tuple[int, int, str]:
    """A run of its own queue claimed by a new worker id, its lease already run out."""
    conn.execute("INSERT INTO pgqueue.tasks (name) VALUES ('fenced_stream') ON CONFLICT DO NOTHING")
    [(run_id,)] = conn.execute("SELECT pgqueue.enqueue('fenced_stream', '{}', queue => %s)",
                               (FENCE_QUEUE,)).fetchall()
    worker = str(uuid.uuid4())
    [(claimed, attempt)] = conn.execute("SELECT id, attempt FROM pgqueue.claim(%s, %s, 1, 30)",
                                        (worker, [FENCE_QUEUE])).fetchall()
    assert claimed == run_id
    conn.execute("UPDATE pgqueue.runs SET lease_expires_at = now() - interval '1 second' WHERE id = %s", (run_id,))
    return run_id, attempt, worker


def _write(conn: psycopg.Connection[Any], worker: str, run_id: int, attempt: int, chunks: list[str]) -> tuple[Any, ...]:
    row = conn.execute("SELECT written, taken_over, length FROM pgqueue.write_stream(%s, %s, %s, %s)",
                       (worker, [run_id] * len(chunks), [attempt] * len(chunks), chunks)).fetchone()
    assert row is not None
    return tuple(row)


def _rescue(conn: psycopg.Connection[Any]) -> list[int]:
    return [r[0] for r in conn.execute(query("worker.rescue"), {"max_recoveries": 10}).fetchall()]


def test_a_zombie_attempt_streams_nothing_after_its_run_was_taken_over(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM pgqueue.ready WHERE queue = %s", (FENCE_QUEUE,))
        run_id, attempt, zombie = _claimed(conn)
        assert _write(conn, zombie, run_id, attempt, ['"a"', '"b"']) == (2, False, 2)
        assert run_id in _rescue(conn)
        heir = str(uuid.uuid4())
        [(_, attempt2)] = conn.execute("SELECT id, attempt FROM pgqueue.claim(%s, %s, 1, 30)",
                                       (heir, [FENCE_QUEUE])).fetchall()
        assert _write(conn, zombie, run_id, attempt, ['"late"']) == (0, True, None)
        assert _write(conn, heir, run_id, attempt2, ['"c"']) == (1, False, 3)
        assert stored(dsn, run_id) == [(0, attempt, "a"), (1, attempt, "b"), (2, attempt2, "c")]


def test_a_rescue_waits_for_chunks_being_written_then_takes_the_run(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as writer, psycopg.connect(dsn, autocommit=True) as rescuer:
        writer.execute("DELETE FROM pgqueue.ready WHERE queue = %s", (FENCE_QUEUE,))
        run_id, attempt, worker = _claimed(writer)
        with writer.transaction():
            assert _write(writer, worker, run_id, attempt, ['"kept"']) == (1, False, 1)
            # the fence holds the run row: the rescue skips it (SKIP LOCKED) until the chunks commit
            assert run_id not in _rescue(rescuer)
        assert run_id in _rescue(rescuer)
        assert stored(dsn, run_id) == [(0, attempt, "kept")]


# -- the command line ----------------------------------------------------------------------------


def pgqueue_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pgqueue_cli", *args], env=env, capture_output=True, text=True,
                          timeout=120)


async def test_cli_tail_follows_a_run_then_replays_it_and_show_has_progress(streams: Any,
                                                                           cli_env: dict[str, str]) -> None:
    handle = await streams.tokens.enqueue_async(n=40, pause=0.01)
    follower = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pgqueue_cli", "runs", "tail", str(handle.id), "--timeout", "60", env=cli_env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    async with running_worker(streams.app):
        assert await handle.result(timeout=30) == 40
        out, err = await asyncio.wait_for(follower.communicate(), 60)
    expected = "".join(f"t{i} " for i in range(40))
    assert (follower.returncode, out.decode(), err.decode()) == (0, expected, "")

    again = await asyncio.to_thread(pgqueue_cli, "runs", "tail", str(handle.id), "--from", "38", "--json",
                                    env=cli_env)
    assert again.returncode == 0, again.stderr
    assert [json.loads(line) for line in again.stdout.splitlines()] == [
        {"offset": 38, "attempt": 1, "data": "t38 "}, {"offset": 39, "attempt": 1, "data": "t39 "}]
    stored_only = await asyncio.to_thread(pgqueue_cli, "runs", "tail", str(handle.id), "--no-follow", env=cli_env)
    assert stored_only.stdout == expected

    show = await asyncio.to_thread(pgqueue_cli, "runs", "show", str(handle.id), env=cli_env)
    assert "progress  40/40 (100%)  token 40 of 40  (attempt 1," in show.stdout, show.stdout
    assert f"stream    40 chunk(s)  (pgqueue runs tail {handle.id})" in show.stdout
    shown = json.loads((await asyncio.to_thread(pgqueue_cli, "runs", "show", str(handle.id), "--json",
                                                env=cli_env)).stdout)
    assert shown["stream_chunks"] == 40 and shown["progress"]["message"] == "token 40 of 40"


def test_cli_tail_of_an_unknown_run_is_one_line_of_error(cli_env: dict[str, str]) -> None:
    result = pgqueue_cli("runs", "tail", "987654321", env=cli_env)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith("Error: no run with id 987654321")


def test_streamed_text_cannot_drive_the_terminal() -> None:
    assert printable("ok\n\tnext \x1b[2J\x07") == "ok\n\tnext \\x1b[2J\\x07"


# -- the pure parts ----------------------------------------------------------------------------


def test_chunks_and_progress_are_checked_before_they_are_queued() -> None:
    assert encode_chunk("héllo", 100) == '"héllo"' and encode_chunk({"a": [1, None]}, 100) == '{"a":[1,null]}'
    with pytest.raises(InvalidInput, match="a stream chunk must be a str or a JSON value"):
        encode_chunk({1, 2}, 100)
    with pytest.raises(InvalidInput, match="a stream chunk must be a str or a JSON value"):
        encode_chunk(float("nan"), 100)
    with pytest.raises(InputTooLarge, match="a stream chunk is 8 bytes, over the limit of 6 bytes"):
        encode_chunk("ééé", 6)  # UTF-8 bytes of the JSON text, as the database counts them
    deep: Any = []
    for _ in range(70):
        deep = [deep]
    with pytest.raises(InvalidInput, match="nests objects and arrays 71 levels deep, over the limit of 64"):
        encode_chunk(deep, 10_000)
    check_progress(3, 10, "ok")
    check_progress(0.5, None, None)
    for done, total, message, fragment in [(float("nan"), 1, None, "done must be a finite number"),
                                           (1, float("inf"), None, "total must be a finite number"),
                                           (True, 1, None, "done must be a finite number"),
                                           ("3", 1, None, "done must be a finite number"),
                                           (1, 1, 5, "message must be a str"),
                                           (1, 1, "x" * 1001, "at most 1000 characters")]:
        with pytest.raises(InvalidInput, match=fragment):
            check_progress(done, total, message)


def test_sse_offsets_from_the_query_or_last_event_id() -> None:
    assert first_offset({}, {}) == 0
    assert first_offset({"offset": "12"}, {}) == 12
    assert first_offset({"offset": "12"}, {"last-event-id": "40"}) == 41  # a reconnecting browser wins
    for params, headers in [({"offset": "-1"}, {}), ({"offset": "1e3"}, {}), ({}, {"last-event-id": "x"}),
                           ({"offset": "١٢"}, {})]:
        with pytest.raises(ValueError):
            first_offset(params, headers)
