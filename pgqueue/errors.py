"""Every error pgqueue raises, in one hierarchy; each message says what is wrong and what to do.

Three kinds live here:
- errors (`PgQueueError` and below): something is wrong, and the message says what to do;
- requests a task raises on purpose (`RetryLater`, `RateLimited`): not failures of the attempt;
- control flow of the worker (`Suspended`, `RunTakenOver`, `StepRetry`, `TaskCancelled`):
  `BaseException`s, so that a task's own `except Exception:` can never swallow them (asyncio's
  `CancelledError` does the same).
"""

from __future__ import annotations


class PgQueueError(Exception):
    """Base class of every error pgqueue raises on purpose."""


# -- configuration and schema ---------------------------------------------------------------

class ConfigurationError(PgQueueError):
    """Settings are missing or wrong (DSN, options, environment)."""


class DatabaseUnavailable(PgQueueError):
    """The PostgreSQL server cannot be reached or refused the connection."""


class DatabaseInterrupted(PgQueueError):
    """pgqueue's own database work for a running task (a step checkpoint, a spawn, a sleep) was
    cut off: the connection dropped, the server restarted or could not be reached.

    Not a failure of the task's code: the worker retries the run without using up the task's
    retry attempts, counting the attempt as `interrupted` (bounded by the worker's
    `max_interruptions`). The original psycopg error is its `__cause__`.
    """


class SchemaMissing(PgQueueError):
    """The pgqueue schema is not installed in this database."""


class SchemaOutdated(PgQueueError):
    """The database schema is older than this version of pgqueue."""


class SchemaTooNew(PgQueueError):
    """The database schema is newer than this version of pgqueue."""


class MigrationFailed(PgQueueError):
    """A migration raised an error; its transaction was rolled back."""


# -- declaring and enqueueing ---------------------------------------------------------------

class TaskDefinitionError(PgQueueError):
    """A task was declared with invalid options."""


class UnknownTask(PgQueueError):
    """No task of that name is registered."""


class InvalidInput(PgQueueError):
    """A run's input does not fit the task (wrong fields, not JSON, too large)."""


class InputTooLarge(InvalidInput):
    """A run's input is larger than the configured limit."""


class StreamLimitExceeded(InputTooLarge):
    """A run streamed more chunks than `pgqueue.max_stream_chunks()` allows; the rest of its
    stream was dropped."""


# -- runs -----------------------------------------------------------------------------------

class RunNotFound(PgQueueError):
    """No run with that id exists (it may have been pruned by retention)."""


class InvalidRunState(PgQueueError):
    """The run's state does not allow that action (e.g. retrying a running run)."""


class UpdateTimedOut(PgQueueError, TimeoutError):
    """`app.update` got no reply from the run in time (the message stays in its mailbox)."""


class UpdateNotAnswered(InvalidRunState):
    """The run an update was sent to ended (or was pruned) without replying to it."""


class RunFailed(PgQueueError):
    """The run ended without a result (failed, cancelled or dead)."""

    def __init__(self, run_id: int, status: str, error: dict[str, object] | None) -> None:
        self.run_id = run_id
        self.status = status
        self.error = error or {}
        detail = f": {self.error.get('type')}: {self.error.get('message')}" if self.error else ""
        super().__init__(f"run {run_id} ended {status}{detail}")


class RunSuspended(PgQueueError):
    """A run called in a test (`pgqueue.testing.call`) went to sleep or waits for an event or
    its children: it continues in a drain once that happens."""

    def __init__(self, run_id: int, status: str) -> None:
        self.run_id = run_id
        self.status = status
        super().__init__(f"run {run_id} is {status} (a durable sleep, wait_for_event or gather): send the event "
                         f"or move the clock, then drain(app) and read app.get_run({run_id}).result()")


class HeartbeatTimeout(PgQueueError):
    """A running attempt of a task with `heartbeat_timeout` went that long without calling
    `ctx.heartbeat()`: it is presumed hung, failed, and retried per the task's policy."""


class NonDeterminismError(PgQueueError):
    """A replay reached a different step than the run's recorded history."""


class ChildRunFailed(PgQueueError):
    """Some children gathered by a run failed, were cancelled or dead."""


class ChildRunError(ChildRunFailed):
    """One child run that did not succeed, as `gather(ids, return_exceptions=True)` returns it
    in the child's place (like `asyncio.gather`): its id, final status and recorded error."""

    def __init__(self, run_id: int, status: str, error: dict[str, object] | None) -> None:
        self.run_id = run_id
        self.status = status
        self.error = error or {}
        super().__init__(f"run {run_id} {status}: {self.error.get('type')}: {self.error.get('message')}")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ChildRunError) and (self.run_id, self.status, self.error) == (
            other.run_id, other.status, other.error)

    def __hash__(self) -> int:
        return hash((self.run_id, self.status))


class WorkflowFailed(PgQueueError):
    """A node of the workflow failed for good; the workflow's run fails with it."""


# -- requests a task makes by raising -------------------------------------------------------

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


class RateLimited(RetryLater):
    """Raise when a provider answers 429: puts the rate limit's key on hold for the whole fleet.

    No worker starts a run that needs `limit` (for `key`) for `retry_after` seconds, and this
    run is retried after that without counting a failed attempt.
    """

    def __init__(self, limit: str, retry_after: float, *, key: str = "", reason: str = "") -> None:
        super().__init__(retry_after, reason or f"rate limit {limit!r} on hold for {retry_after:g}s")
        self.limit = limit
        self.key = key


# -- the worker's control flow (never caught by `except Exception`) ---------------------------

class Suspended(BaseException):
    """The run was suspended (durable sleep, waiting); the worker has nothing more to record."""


class RunTakenOver(BaseException):
    """A fenced write found the run no longer running this attempt here (rescued or cancelled)."""


class StepRetry(BaseException):
    """A step with its own `retry=` policy failed and asks for the run to be retried after `delay`.

    Raised by `ctx.step` (never by user code): as a `BaseException`, a task's `except Exception:`
    around the step does not swallow it, so the step's policy applies; the task's code sees the
    step's failure (the original exception) only once the step's retries are spent.
    """

    def __init__(self, delay: float, reason: str) -> None:
        self.delay = delay
        self.reason = reason
        super().__init__(f"retry in {delay:g}s: {reason}")


class TaskCancelled(BaseException):
    """The run was cancelled while it ran (raised by `ctx.raise_if_cancelled()`).

    A `BaseException`, like `asyncio.CancelledError`: a sync task's `except Exception:` does not
    swallow it, and the run ends cancelled. Catch it by name to clean up, then re-raise it.
    """
