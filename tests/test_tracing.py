"""OpenTelemetry traces: enqueue -> run (per attempt) -> steps, and spawned children, in one trace."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from conftest import bind, running_worker
from pgqueue import PgQueue, Retry, current_run, tracing

pytestmark = pytest.mark.timeout(120)

app = PgQueue()


@app.task(retry=Retry(max_attempts=3, initial_delay=0.05, jitter=0))
async def agent(text: str) -> int:
    ctx = current_run()
    words = await ctx.step("split", lambda: text.split())
    if ctx.attempt == 1:
        raise RuntimeError("provider down")
    return sum(await ctx.gather(await ctx.spawn(count_word, [{"word": w} for w in words])))


@app.task
def count_word(word: str) -> int:
    return current_run().step_sync("measure", len, word)


@pytest.fixture
def provider(dsn: str) -> Iterator[TracerProvider]:
    """A provider given to pgqueue only (OpenTelemetry's global one can be set once per process)."""
    bind(app, dsn)
    traced = TracerProvider()
    tracing.set_tracer_provider(traced)
    yield traced
    tracing.set_tracer_provider(None)
    bind(app, None)


@pytest.fixture
def exporter(provider: TracerProvider) -> InMemorySpanExporter:
    memory = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    return memory


def named(spans: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


def parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def attr(span: ReadableSpan, key: str) -> Any:
    return (span.attributes or {}).get(key)


def span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return int(span.context.span_id)


async def test_a_run_its_attempts_steps_and_children_form_one_trace(provider: TracerProvider,
                                                                   exporter: InMemorySpanExporter) -> None:
    assert tracing.enabled()
    with provider.get_tracer("the app").start_as_current_span("handle request") as root:
        handle = await agent.enqueue_async("postgres is enough")
    async with running_worker(app, concurrency=4):
        assert await handle.result(timeout=60) == len("postgresisenough")
    spans = exporter.get_finished_spans()
    trace_id = root.get_span_context().trace_id
    assert {s.context.trace_id for s in spans if s.context is not None} == {trace_id}

    [enqueue] = named(spans, "pgqueue.enqueue agent")
    assert parent_of(enqueue) == root.get_span_context().span_id
    assert enqueue.attributes is not None and enqueue.attributes["pgqueue.run.id"] == handle.id

    # attempt 1 fails, attempt 2 spawns and waits, attempt 3 gathers: each a run span under the enqueue
    runs = sorted(named(spans, "pgqueue.run agent"), key=lambda s: attr(s, "pgqueue.attempt"))
    assert [parent_of(r) for r in runs] == [span_id(enqueue)] * 3
    assert [attr(r, "pgqueue.outcome") for r in runs] == ["retry", "suspended", "succeeded"]
    assert [r.status.status_code for r in runs] == [StatusCode.ERROR, StatusCode.UNSET, StatusCode.UNSET]
    [error] = [e for e in runs[0].events if e.name == "exception"]
    assert error.attributes is not None and error.attributes["exception.type"] == "RuntimeError"
    assert "provider down" in str(error.attributes["exception.stacktrace"])
    assert all(attr(r, "pgqueue.queue") == "default" for r in runs)

    # the step ran once, under the first attempt; later attempts only note that it was replayed
    [split] = named(spans, "pgqueue.step split")
    assert parent_of(split) == span_id(runs[0])
    for later in runs[1:]:
        assert [(e.attributes or {}).get("pgqueue.step.key") for e in later.events
                if e.name == "pgqueue.step.replayed"] == ["split#0"]

    # the spawn is one enqueue span under attempt 2; the children's runs and steps hang below it
    [spawn] = named(spans, "pgqueue.enqueue count_word")
    assert parent_of(spawn) == span_id(runs[1])
    assert spawn.attributes is not None and spawn.attributes["messaging.batch.message_count"] == 3
    children = named(spans, "pgqueue.run count_word")
    assert len(children) == 3 and {parent_of(c) for c in children} == {span_id(spawn)}
    measures = named(spans, "pgqueue.step measure")
    assert sorted(parent_of(m) or 0 for m in measures) == sorted(span_id(c) for c in children)


async def test_a_failing_step_is_an_error_span(exporter: InMemorySpanExporter) -> None:
    @app.task(name="flaky_step", retry=Retry(max_attempts=1))
    async def flaky_step() -> None:
        await current_run().step("call", lambda: 1 / 0)

    handle = await flaky_step.enqueue_async()
    async with running_worker(app):
        with pytest.raises(Exception, match="ZeroDivisionError"):
            await handle.result(timeout=30)
    del app.tasks["flaky_step"]
    spans = exporter.get_finished_spans()
    [step] = named(spans, "pgqueue.step call")
    [run] = named(spans, "pgqueue.run flaky_step")
    assert step.status.status_code == StatusCode.ERROR and parent_of(step) == span_id(run)
    assert run.status.status_code == StatusCode.ERROR and attr(run, "pgqueue.outcome") == "failed"
    # enqueued outside any span: the enqueue starts the trace
    [enqueue] = named(spans, "pgqueue.enqueue flaky_step")
    assert enqueue.parent is None and parent_of(run) == span_id(enqueue)


def test_a_bulk_enqueue_is_one_span_and_stores_the_context(exporter: InMemorySpanExporter, dsn: str) -> None:
    handles = count_word.enqueue_many([{"word": w} for w in ("a", "bb", "ccc")])
    [span] = exporter.get_finished_spans()
    assert span.name == "pgqueue.enqueue count_word" and span.kind.name == "PRODUCER"
    assert span.attributes is not None and span.attributes["pgqueue.runs.created"] == 3
    with psycopg.connect(dsn) as conn:
        stored = conn.execute("SELECT trace_context FROM pgqueue.runs WHERE id = ANY(%s)",
                              ([h.id for h in handles],)).fetchall()
    context = span.get_span_context()
    assert context is not None
    traceparent = f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"
    assert [row[0]["traceparent"] for row in stored] == [traceparent] * 3


async def test_off_without_a_provider_no_context_is_stored(dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    bind(app, dsn)
    assert not tracing.enabled()  # the API alone, no provider configured

    async def no_query(*args: Any) -> Any:
        raise AssertionError("the worker read trace contexts with tracing off")

    monkeypatch.setattr("pgqueue.worker.Worker._with_trace_contexts", no_query)
    handle = await count_word.enqueue_async("abcd")
    async with running_worker(app):
        assert await handle.result(timeout=30) == 4
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT trace_context FROM pgqueue.runs WHERE id = %s", (handle.id,)).fetchone() == (None,)
    bind(app, None)
