"""pgqueue: durable tasks and workflows for Python, on PostgreSQL alone."""

from .app import PgQueue
from .context import RetryLater, RunContext, TaskCancelled, current_run
from .cron import Schedule
from .durable import ChildRunFailed, NonDeterminismError
from .errors import (
    ConfigurationError,
    DatabaseUnavailable,
    InputTooLarge,
    InvalidInput,
    InvalidRunState,
    PgQueueError,
    RunFailed,
    RunNotFound,
    SchemaMissing,
    SchemaOutdated,
    TaskDefinitionError,
    UnknownTask,
)
from .flow import Concurrency, RateLimit, RateLimited
from .retry import Retry
from .runs import AsyncRunHandle, RunHandle, RunInfo
from .task import Task, TaskCall
from .workflow import Workflow, WorkflowFailed

__all__ = [
    "AsyncRunHandle",
    "ChildRunFailed",
    "Concurrency",
    "ConfigurationError",
    "DatabaseUnavailable",
    "InputTooLarge",
    "InvalidInput",
    "InvalidRunState",
    "NonDeterminismError",
    "PgQueue",
    "PgQueueError",
    "RateLimit",
    "RateLimited",
    "Retry",
    "RetryLater",
    "RunContext",
    "RunFailed",
    "RunHandle",
    "RunInfo",
    "RunNotFound",
    "Schedule",
    "SchemaMissing",
    "SchemaOutdated",
    "Task",
    "TaskCall",
    "TaskCancelled",
    "TaskDefinitionError",
    "UnknownTask",
    "Workflow",
    "WorkflowFailed",
    "current_run",
]
