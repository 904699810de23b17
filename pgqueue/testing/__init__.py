"""pgqueue's testing kit: throwaway databases, draining queued work through the real worker,
calling a task with a real run context, time travel, and assertions on what was enqueued.

    from pgqueue.testing import call, drain, enqueued

    def test_signup(pgqueue_app, pgqueue_clock):        # fixtures of the pytest plugin
        signup.enqueue(email="ann@example.com")
        drain(pgqueue_app).raise_failures()             # signup, then what it spawned
        pgqueue_clock.advance(days=1)                   # the reminder's durable sleep is over
        drain(pgqueue_app)
        assert [r.input for r in enqueued(pgqueue_app, send_email)] == [...]

See docs/testing.md.
"""

from __future__ import annotations

from ..errors import RunSuspended
from .binding import bound
from .call import call, call_async
from .clock import Clock
from .drain import Drained, drain, drain_async
from .enqueued import assert_enqueued, enqueued, enqueued_async
from .server import TestServer

__all__ = [
    "Clock",
    "Drained",
    "RunSuspended",
    "TestServer",
    "assert_enqueued",
    "bound",
    "call",
    "call_async",
    "drain",
    "drain_async",
    "enqueued",
    "enqueued_async",
]
