"""examples/sentry_hooks.py: failed runs reach Sentry through the hooks (a capturing transport
stands in for sentry.io; skipped where sentry-sdk is not installed)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import pytest

from conftest import ROOT, bind, running_worker
from pgqueue import PgQueue, Retry, RunFailed

sentry_sdk = pytest.importorskip("sentry_sdk")
sys.path.insert(0, str(ROOT / "examples"))
from sentry_hooks import report_to_sentry  # noqa: E402

pytestmark = pytest.mark.timeout(120)

app = PgQueue()
report_to_sentry(app, report_retries=True)


@app.task(retry=Retry(max_attempts=2, initial_delay=0.05, jitter=0))
def charge(order: int) -> None:
    raise ConnectionError(f"payment provider unreachable for order {order}")


@app.task
def fine() -> str:
    return "ok"


class Captured(sentry_sdk.transport.Transport):  # type: ignore[misc,name-defined]
    def __init__(self) -> None:
        super().__init__()
        self.events: list[dict[str, Any]] = []

    def capture_envelope(self, envelope: Any) -> None:
        event = envelope.get_event()
        if event is not None:
            self.events.append(event)


@pytest.fixture
def sentry() -> Iterator[Captured]:
    transport = Captured()
    sentry_sdk.init(dsn="https://public@sentry.invalid/1", transport=transport, default_integrations=False)
    yield transport
    sentry_sdk.get_client().close()
    sentry_sdk.init()  # a disabled client: nothing is sent from later tests


async def test_a_failed_run_is_one_sentry_event_with_its_traceback_and_tags(sentry: Captured, dsn: str) -> None:
    bind(app, dsn)
    try:
        failing = await charge.enqueue_async(7)
        ok = await fine.enqueue_async()
        async with running_worker(app, poll_interval=0.02):
            assert await ok.result(timeout=30) == "ok"
            with pytest.raises(RunFailed, match="ConnectionError"):
                await failing.result(timeout=30)
    finally:
        bind(app, None)
    sentry_sdk.flush()
    levels = [(e["level"], e["contexts"]["pgqueue"]["final"]) for e in sentry.events]
    assert levels == [("warning", False), ("error", True)]  # the retried attempt, then the final failure
    final = sentry.events[1]
    assert final["tags"] == {"pgqueue.task": "charge", "pgqueue.queue": "default"}
    assert final["contexts"]["pgqueue"]["run_id"] == failing.id and final["contexts"]["pgqueue"]["attempt"] == 2
    [exception] = final["exception"]["values"]
    assert exception["type"] == "ConnectionError"
    assert exception["value"] == "payment provider unreachable for order 7"
    frames = exception["stacktrace"]["frames"]
    assert frames[-1]["function"] == "charge"  # the traceback reaches into the task's code
    assert final["fingerprint"] == ["pgqueue", "charge", "ConnectionError"]
