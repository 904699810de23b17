"""What a running task can know and ask for: its run, cancellation, and a retry later."""

from __future__ import annotations

import contextvars
import threading
from dataclasses import dataclass, field

from .errors import PgQueueError


class RetryLater(Exception):
    """Raise inside a task to run it again after `delay` seconds, e.g. on a provider's 429.

    It does not count as a failed attempt: the retry policy's attempts are not used up.
    """

    def __init__(self, delay: float, reason: str = "") -> None:
        if delay < 0:
            raise ValueError("RetryLater delay must be >= 0 seconds")
        self.delay = delay
        self.reason = reason
        super().__init__(f"retry in {delay:g}s{': ' + reason if reason else ''}")


class TaskCancelled(PgQueueError):
    """The run was cancelled while it ran."""


@dataclass
class RunContext:
    """The run a task is executing; get it with `pgqueue.current_run()`."""

    run_id: int
    task: str
    attempt: int
    worker_id: str
    _cancel: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def cancel_requested(self) -> bool:
        """True once someone asked to cancel this run; sync tasks should check it and return."""
        return self._cancel.is_set()

    def raise_if_cancelled(self) -> None:
        if self._cancel.is_set():
            raise TaskCancelled(f"run {self.run_id} was cancelled")


_current: contextvars.ContextVar[RunContext] = contextvars.ContextVar("pgqueue_run")


def current_run() -> RunContext:
    """The context of the run being executed (inside a task, sync or async)."""
    try:
        return _current.get()
    except LookupError:
        raise PgQueueError("current_run() is only available inside a task run by a worker") from None
