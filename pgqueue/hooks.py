"""Hooks: functions an application registers to hear about attempts and finished runs.

    @app.hooks.before_attempt
    def tag(attempt: pgqueue.AttemptStarted) -> None: ...

    @app.hooks.on_failure
    async def page(run: pgqueue.RunFinished) -> None: ...

`before_attempt` and `after_attempt` run in the attempt's own asyncio task, just before and just
after the task's function (so context variables a `before_attempt` hook sets are seen by the
task's code, sync or async). `on_success` and `on_failure` run once the worker has recorded the
run's final outcome: `on_failure` hears every run that ends `failed` on this worker, including
failures decided when the outcome is written (a retry past the run's deadline, say), which an
`after_attempt` hook cannot know yet. Runs marked dead by another worker's rescuer (their worker
died) reach no hook.

A hook may be sync or async. It runs on the worker's event loop: keep sync hooks quick (hand slow
work to a thread or make the hook async). An exception in a hook is logged and changes nothing
about the run. With no hook registered, the worker does no hook work at all.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

log = logging.getLogger("pgqueue.worker")


@dataclass(frozen=True)
class AttemptStarted:
    """An attempt about to call the task's function."""

    run_id: int
    task: str
    attempt: int
    queue: str | None
    worker_id: str


@dataclass(frozen=True)
class AttemptFinished(AttemptStarted):
    """An attempt whose function returned, raised, or suspended the run.

    `outcome`: 'succeeded', 'retry', 'failed', 'timeout', 'heartbeat_timeout', 'cancelled',
    'expired', 'interrupted' or 'suspended' (sleeping or waiting, to be continued). `next_status`:
    what the worker asks for the run (`queued` for a retry); writing it may still turn a retry
    into a failure, which `on_failure` then reports.
    """

    outcome: str = "succeeded"
    next_status: str | None = None
    error_type: str | None = None
    error_message: str | None = None
    #: the exception the task raised, when there is one (None for success, suspension, expiry)
    exception: BaseException | None = field(default=None, compare=False)
    #: seconds the attempt took on this worker
    duration: float = 0.0


@dataclass(frozen=True)
class RunFinished:
    """A run recorded as finished for good by this worker: `succeeded` or `failed`."""

    run_id: int
    task: str
    attempt: int
    queue: str | None
    worker_id: str
    status: str
    error_type: str | None = None
    error_message: str | None = None
    #: the exception of the last attempt, when the failure came from one in this worker
    exception: BaseException | None = field(default=None, compare=False)


E = TypeVar("E")
Hook = Callable[[E], Awaitable[None] | None]
H = TypeVar("H", bound=Callable[..., Any])


@dataclass
class Hooks:
    """The hooks of an application (`app.hooks`); each decorator registers and returns the function."""

    before: list[Hook[AttemptStarted]] = field(default_factory=list)
    after: list[Hook[AttemptFinished]] = field(default_factory=list)
    succeeded: list[Hook[RunFinished]] = field(default_factory=list)
    failed: list[Hook[RunFinished]] = field(default_factory=list)

    def before_attempt(self, fn: H) -> H:
        """Call `fn(AttemptStarted)` before each attempt."""
        self.before.append(fn)
        return fn

    def after_attempt(self, fn: H) -> H:
        """Call `fn(AttemptFinished)` after each attempt, whatever happened."""
        self.after.append(fn)
        return fn

    def on_success(self, fn: H) -> H:
        """Call `fn(RunFinished)` once a run's success is recorded."""
        self.succeeded.append(fn)
        return fn

    def on_failure(self, fn: H) -> H:
        """Call `fn(RunFinished)` once a run is recorded as failed for good (no retry left)."""
        self.failed.append(fn)
        return fn

    def wants_runs(self) -> bool:
        return bool(self.succeeded or self.failed)


async def fire(hooks: list[Hook[E]], event: E) -> None:
    """Call each hook with `event`; a hook's exception is logged, never raised."""
    for hook in hooks:
        try:
            result = hook(event)
            if inspect.isawaitable(result):
                await result
        except Exception:
            log.exception("hook %s failed on %r; the run is not affected",
                          getattr(hook, "__qualname__", repr(hook)), event)
