"""OpenTelemetry spans for enqueue, run and step, carried from the enqueuing code into the run.

Off unless opentelemetry-api is importable and a tracer provider is configured (the global one,
or one given to `set_tracer_provider`): then every function here returns a shared no-op at once,
and the worker sends no extra query. The trace context travels in `pgqueue.runs.trace_context`
as a W3C carrier (`{"traceparent": ..., "tracestate": ...}`), written by the enqueue and read
back by the worker, so an enqueue, its runs, their steps and the children they spawn form one
trace. A run span's parent is the enqueue span (not a link): every attempt of the run, and
every wake-up of a durable run, appears under the enqueue that asked for it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any

try:
    from opentelemetry import context as otel_context
    from opentelemetry import propagate, trace
    from opentelemetry.trace import SpanKind, Status, StatusCode

    _IMPORTED = True
except ImportError:  # the `otel` extra is not installed: tracing stays off
    _IMPORTED = False

_provider: Any = None  # set_tracer_provider's override, else the global provider
_tracer: tuple[Any, Any] | None = None  # (provider, its tracer), so get_tracer runs once per provider


def set_tracer_provider(provider: Any) -> None:
    """Trace with `provider` instead of OpenTelemetry's global one; None goes back to the global."""
    global _provider
    _provider = provider


def _get_tracer() -> Any:
    """The tracer to use, or None when tracing is off."""
    global _tracer
    if not _IMPORTED:
        return None
    provider = _provider if _provider is not None else trace.get_tracer_provider()
    # the API's placeholders until an application configures a provider: nothing would be recorded
    if isinstance(provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider)):
        return None
    if _tracer is None or _tracer[0] is not provider:
        _tracer = (provider, provider.get_tracer("pgqueue"))
    return _tracer[1]


def enabled() -> bool:
    """True when spans are recorded (the worker then also reads each run's trace context)."""
    return _get_tracer() is not None


class _Noop:
    """What the span helpers return when tracing is off."""

    carrier: dict[str, str] | None = None

    def __enter__(self) -> _Noop:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        return None

    def enqueued(self, found: Sequence[tuple[int, bool]]) -> None:
        pass

    def finished(self, outcome: str, error: Mapping[str, Any] | None = None, failed: bool = False) -> None:
        pass


NOOP = _Noop()


def _fail(span: Any, exc: BaseException) -> None:
    span.record_exception(exc)
    span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))


class _EnqueueSpan(_Noop):
    """Ended when the enqueue operation ends. Never made current: the operation is a generator
    whose statements may run elsewhere, and nothing runs inside it that could be a child."""

    def __init__(self, tracer: Any, task: str, queue: str | None, count: int) -> None:
        attributes: dict[str, Any] = {"messaging.system": "pgqueue", "messaging.operation.type": "send",
                                      "pgqueue.task": task}
        if queue is not None:
            attributes["pgqueue.queue"] = attributes["messaging.destination.name"] = queue
        if count != 1:
            attributes["messaging.batch.message_count"] = count
        self.span = tracer.start_span(f"pgqueue.enqueue {task}", kind=SpanKind.PRODUCER, attributes=attributes)
        self.carrier = {}
        propagate.inject(self.carrier, context=trace.set_span_in_context(self.span))

    def enqueued(self, found: Sequence[tuple[int, bool]]) -> None:
        if len(found) == 1:
            self.span.set_attribute("pgqueue.run.id", found[0][0])
            self.span.set_attribute("pgqueue.created", found[0][1])
        else:
            self.span.set_attribute("pgqueue.runs.created", sum(1 for _, created in found if created))

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc is not None and not isinstance(exc, GeneratorExit):
            _fail(self.span, exc)
        self.span.end()


def enqueue_span(task: str, queue: str | None, count: int) -> _Noop:
    """A `pgqueue.enqueue <task>` span (producer) for one enqueue call of `count` runs; its
    `carrier` is what to store as the runs' trace context (None when tracing is off)."""
    tracer = _get_tracer()
    return NOOP if tracer is None else _EnqueueSpan(tracer, task, queue, count)


class _RunSpan(_Noop):
    """Current while the attempt runs, so steps and enqueues of children become its children."""

    def __init__(self, tracer: Any, task: str, run_id: int, attempt: int, queue: str | None,
                 carrier: Mapping[str, str] | None) -> None:
        # an empty base context: a run without a carrier starts its own trace instead of joining
        # whatever span happened to be current where the worker was started
        parent = propagate.extract(dict(carrier or {}), context=otel_context.Context())
        attributes: dict[str, Any] = {"messaging.system": "pgqueue", "messaging.operation.type": "process",
                                      "pgqueue.task": task, "pgqueue.run.id": run_id, "pgqueue.attempt": attempt}
        if queue is not None:
            attributes["pgqueue.queue"] = attributes["messaging.destination.name"] = queue
        self.span = tracer.start_span(f"pgqueue.run {task}", context=parent, kind=SpanKind.CONSUMER,
                                      attributes=attributes)
        self._token: Any = None

    def __enter__(self) -> _RunSpan:
        self._token = otel_context.attach(trace.set_span_in_context(self.span))
        return self

    def finished(self, outcome: str, error: Mapping[str, Any] | None = None, failed: bool = False) -> None:
        """Record the attempt's outcome; `failed` marks the span ERROR with the stored error."""
        self.span.set_attribute("pgqueue.outcome", outcome)
        if failed and error is not None:
            # the exception was caught and turned into an outcome: record what will be stored
            self.span.add_event("exception", {"exception.type": str(error.get("type")),
                                              "exception.message": str(error.get("message")),
                                              "exception.stacktrace": str(error.get("traceback", ""))})
            self.span.set_status(Status(StatusCode.ERROR, f"{error.get('type')}: {error.get('message')}"))

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        otel_context.detach(self._token)
        if exc is not None:
            if isinstance(exc, Exception):
                _fail(self.span, exc)
            else:  # the worker shut down or lost the lease: the run goes back to the queue
                self.span.set_attribute("pgqueue.outcome", "interrupted")
        self.span.end()


def run_span(task: str, run_id: int, attempt: int, queue: str | None = None,
             carrier: Mapping[str, str] | None = None) -> _Noop:
    """A `pgqueue.run <task>` span (consumer) for one attempt, child of the enqueue in `carrier`."""
    tracer = _get_tracer()
    return NOOP if tracer is None else _RunSpan(tracer, task, run_id, attempt, queue, carrier)


class _StepSpan(_Noop):
    def __init__(self, tracer: Any, name: str, key: str, run_id: int) -> None:
        self.span = tracer.start_span(f"pgqueue.step {name}",
                                      attributes={"pgqueue.step.key": key, "pgqueue.run.id": run_id})
        self._token: Any = None

    def __enter__(self) -> _StepSpan:
        self._token = otel_context.attach(trace.set_span_in_context(self.span))
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        otel_context.detach(self._token)
        if exc is not None:
            _fail(self.span, exc)
        self.span.end()


def step_span(name: str, key: str, run_id: int) -> _Noop:
    """A `pgqueue.step <name>` span around a step that executes (not one replayed from history)."""
    tracer = _get_tracer()
    return NOOP if tracer is None else _StepSpan(tracer, name, key, run_id)


def step_replayed(key: str) -> None:
    """Mark on the current (run) span that step `key` returned its checkpoint without running."""
    if _get_tracer() is not None:
        trace.get_current_span().add_event("pgqueue.step.replayed", {"pgqueue.step.key": key})
