"""pgqueue: durable tasks and workflows for Python, on PostgreSQL alone."""

from .app import PgQueue
from .errors import (
    ConfigurationError,
    DatabaseUnavailable,
    InputTooLarge,
    InvalidInput,
    PgQueueError,
    RunFailed,
    RunNotFound,
    SchemaMissing,
    SchemaOutdated,
    TaskDefinitionError,
    UnknownTask,
)
from .retry import Retry
from .runs import AsyncRunHandle, RunHandle, RunInfo
from .task import Task, TaskCall

__all__ = [
    "AsyncRunHandle",
    "ConfigurationError",
    "DatabaseUnavailable",
    "InputTooLarge",
    "InvalidInput",
    "PgQueue",
    "PgQueueError",
    "Retry",
    "RunFailed",
    "RunHandle",
    "RunInfo",
    "RunNotFound",
    "SchemaMissing",
    "SchemaOutdated",
    "Task",
    "TaskCall",
    "TaskDefinitionError",
    "UnknownTask",
]
