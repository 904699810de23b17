"""Errors pgqueue raises; each message says what is wrong and what to do."""

from __future__ import annotations


class PgQueueError(Exception):
    """Base class of every error pgqueue raises on purpose."""


class ConfigurationError(PgQueueError):
    """Settings are missing or wrong (DSN, options, environment)."""


class DatabaseUnavailable(PgQueueError):
    """The PostgreSQL server cannot be reached or refused the connection."""


class SchemaMissing(PgQueueError):
    """The pgqueue schema is not installed in this database."""


class SchemaOutdated(PgQueueError):
    """The database schema is older than this version of pgqueue."""


class MigrationFailed(PgQueueError):
    """A migration raised an error; its transaction was rolled back."""


class SchemaTooNew(PgQueueError):
    """The database schema is newer than this version of pgqueue."""


class TaskDefinitionError(PgQueueError):
    """A task was declared with invalid options."""


class UnknownTask(PgQueueError):
    """No task of that name is registered."""


class InvalidInput(PgQueueError):
    """A run's input does not fit the task (wrong fields, not JSON, too large)."""


class InputTooLarge(InvalidInput):
    """A run's input is larger than the configured limit."""


class RunFailed(PgQueueError):
    """The run ended without a result (failed, cancelled or dead)."""

    def __init__(self, run_id: int, status: str, error: dict[str, object] | None) -> None:
        self.run_id = run_id
        self.status = status
        self.error = error or {}
        detail = f": {self.error.get('type')}: {self.error.get('message')}" if self.error else ""
        super().__init__(f"run {run_id} ended {status}{detail}")


class InvalidRunState(PgQueueError):
    """The run's state does not allow that action (e.g. retrying a running run)."""


class RunNotFound(PgQueueError):
    """No run with that id exists (it may have been pruned by retention)."""
