"""Reporting failed runs to Sentry, built on pgqueue's hooks.

    import sentry_sdk
    from sentry_hooks import report_to_sentry

    sentry_sdk.init(dsn="https://...@sentry.io/...")
    report_to_sentry(app)                    # once, where the worker's app is defined

Each run that fails for good becomes one Sentry event: the task's exception with its traceback
(or, for a failure decided by pgqueue itself, such as an expired run or a deadline, a message
with pgqueue's error), tagged with the task and queue, with the run id, attempt and worker in a
`pgqueue` context, and grouped per task and error type. With `report_retries=True`, each failed
attempt that will be retried is reported too, at level "warning".

The hooks run on the worker's event loop; `capture_exception` only queues the event (the SDK
sends it from a thread of its own), so they stay quick.
"""

from __future__ import annotations

from typing import Any

import sentry_sdk

from pgqueue import AttemptFinished, PgQueue, RunFinished

#: attempt outcomes that are failures of the task's code (not cancellations or suspensions)
FAILED_ATTEMPTS = {"retry", "failed", "timeout", "heartbeat_timeout"}


def _capture(task: str, queue: str | None, context: dict[str, Any], exception: BaseException | None,
             error_type: str | None, error_message: str | None, level: str) -> None:
    with sentry_sdk.new_scope() as scope:
        scope.set_tag("pgqueue.task", task)
        scope.set_tag("pgqueue.queue", queue or "")
        scope.set_context("pgqueue", context)
        scope.fingerprint = ["pgqueue", task, error_type or "unknown"]
        scope.set_level(level)  # type: ignore[arg-type]
        if exception is not None:
            sentry_sdk.capture_exception(exception)
        else:
            sentry_sdk.capture_message(f"pgqueue task {task} failed: {error_type}: {error_message}")


def report_to_sentry(app: PgQueue, *, report_retries: bool = False) -> None:
    """Register the hooks that report `app`'s failed runs (and retried attempts) to Sentry."""

    @app.hooks.on_failure
    def report_failure(run: RunFinished) -> None:
        _capture(run.task, run.queue, {"run_id": run.run_id, "attempt": run.attempt, "worker_id": run.worker_id,
                                       "final": True},
                 run.exception, run.error_type, run.error_message, "error")

    if report_retries:
        @app.hooks.after_attempt
        def report_retry(attempt: AttemptFinished) -> None:
            if attempt.outcome in FAILED_ATTEMPTS and attempt.next_status == "queued":
                _capture(attempt.task, attempt.queue, {"run_id": attempt.run_id, "attempt": attempt.attempt,
                                                       "worker_id": attempt.worker_id, "final": False},
                         attempt.exception, attempt.error_type, attempt.error_message, "warning")
