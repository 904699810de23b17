"""Hooks around attempts and finished runs, and the worker's log of failures."""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from conftest import bind, running_worker
from pgqueue import AttemptFinished, AttemptStarted, PgQueue, Retry, RunFailed, RunFinished

pytestmark = pytest.mark.timeout(120)

app = PgQueue()
seen: list[tuple[str, Any]] = []
request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="none")
tries: dict[str, int] = {}


@app.hooks.before_attempt
def before(attempt: AttemptStarted) -> None:
    seen.append(("before", attempt))
    request_id.set(f"run-{attempt.run_id}")  # what a Sentry scope or a log context would do


@app.hooks.after_attempt
async def after(attempt: AttemptFinished) -> None:
    seen.append(("after", attempt))


@app.hooks.on_success
def succeeded(run: RunFinished) -> None:
    seen.append(("success", run))


@app.hooks.on_failure
async def failed(run: RunFinished) -> None:
    seen.append(("failure", run))


@app.hooks.on_failure
def broken_hook(run: RunFinished) -> None:
    raise RuntimeError("a hook that fails changes nothing")


@app.task(retry=Retry(max_attempts=3, initial_delay=0.05, jitter=0))
def flaky(label: str, failures: int) -> str:
    tries[label] = tries.get(label, 0) + 1
    if tries[label] <= failures:
        raise ValueError(f"{label} failure #{tries[label]}")
    return f"{label} seen by {request_id.get()}"


@app.task(deadline=30, retry=Retry(max_attempts=5, initial_delay=60, jitter=0))
def past_deadline() -> None:
    raise ValueError("retried after its deadline")


@app.task
async def seen_context() -> str:
    return request_id.get()


@pytest.fixture
def hooked(dsn: str) -> Iterator[PgQueue]:
    bind(app, dsn)
    seen.clear()
    tries.clear()
    yield app
    bind(app, None)


def events(kind: str, run_id: int) -> list[Any]:
    return [event for what, event in seen if what == kind and event.run_id == run_id]


async def test_hooks_hear_each_attempt_and_the_final_outcome(hooked: PgQueue, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pgqueue.worker")
    recovers = await flaky.enqueue_async("recovers", 1)
    gives_up = await flaky.enqueue_async("gives-up", 5)
    context = await seen_context.enqueue_async()
    async with running_worker(hooked, poll_interval=0.02):
        # the sync task (thread pool) and the async one see what before_attempt set
        assert await recovers.result(timeout=30) == f"recovers seen by run-{recovers.id}"
        assert await context.result(timeout=30) == f"run-{context.id}"
        with pytest.raises(RunFailed, match="gives-up failure #3"):
            await gives_up.result(timeout=30)
    # run hooks start once the outcome is written; the worker waits for them when it stops

    assert [a.attempt for a in events("before", recovers.id)] == [1, 2]
    assert [(a.outcome, a.next_status, a.error_type) for a in events("after", recovers.id)] == [
        ("retry", "queued", "ValueError"), ("succeeded", "succeeded", None)]
    assert isinstance(events("after", recovers.id)[0].exception, ValueError)
    [success] = events("success", recovers.id)
    assert (success.task, success.attempt, success.status, success.queue) == ("flaky", 2, "succeeded", "default")
    assert events("failure", recovers.id) == []

    assert [a.outcome for a in events("after", gives_up.id)] == ["retry", "retry", "failed"]
    [failure] = events("failure", gives_up.id)
    assert (failure.status, failure.attempt, failure.error_type) == ("failed", 3, "ValueError")
    assert failure.error_message == "gives-up failure #3"
    assert isinstance(failure.exception, ValueError) and str(failure.exception) == "gives-up failure #3"
    assert events("success", gives_up.id) == []

    # the worker's log: every failed attempt, and the final failure, with run id, task, error
    messages = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "pgqueue.worker"]
    for attempt in (1, 2):
        delay = 0.05 * 2 ** (attempt - 1)
        assert (logging.WARNING, f"run {gives_up.id} (task flaky) attempt {attempt} failed: ValueError: "
                                 f"gives-up failure #{attempt}; retrying in {delay:.1f}s") in messages
    assert (logging.WARNING, f"run {recovers.id} (task flaky) attempt 1 failed: ValueError: recovers failure #1; "
                             "retrying in 0.1s") in messages
    assert (logging.ERROR, f"run {gives_up.id} (task flaky) failed for good at attempt 3: ValueError: "
                           "gives-up failure #3") in messages
    final = next(r for r in caplog.records if r.getMessage().startswith(f"run {gives_up.id} (task flaky) failed"))
    assert final.exc_info is not None and final.exc_info[1] is failure.exception  # with its traceback
    # the hook that raised was logged, and changed nothing
    assert any("broken_hook failed" in m for _, m in messages)


async def test_a_failure_decided_when_the_outcome_is_written_reaches_on_failure(hooked: PgQueue) -> None:
    """A retry the database refuses (its backoff ends after the run's deadline) is a final failure
    that only the write knows about: on_failure hears it, with the database's error."""
    handle = await past_deadline.enqueue_async()
    async with running_worker(hooked, poll_interval=0.02):
        with pytest.raises(RunFailed, match="DeadlineExceeded"):
            await handle.result(timeout=30)
    [attempt] = events("after", handle.id)
    assert (attempt.outcome, attempt.next_status) == ("retry", "queued")  # what the worker asked for
    [failure] = events("failure", handle.id)
    assert (failure.status, failure.error_type) == ("failed", "DeadlineExceeded")
    assert isinstance(failure.exception, ValueError)
