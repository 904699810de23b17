"""pgqueue: durable tasks and workflows for Python, on PostgreSQL alone."""

from .app import PgQueue
from .context import RunContext, current_run
from .control import Batch, Debounce, Singleton, Throttle
from .cron import Schedule
from .errors import (
    ChildRunError,
    ChildRunFailed,
    ConfigurationError,
    DatabaseInterrupted,
    DatabaseUnavailable,
    InputTooLarge,
    InvalidInput,
    InvalidRunState,
    NonDeterminismError,
    PgQueueError,
    RateLimited,
    RetryLater,
    RunFailed,
    RunNotFound,
    SchemaMissing,
    SchemaOutdated,
    StreamLimitExceeded,
    TaskCancelled,
    TaskDefinitionError,
    UnknownTask,
    UpdateNotAnswered,
    UpdateTimedOut,
    WorkflowFailed,
)
from .flow import Concurrency, RateLimit
from .handles import AsyncRunHandle, RunHandle
from .hooks import AttemptFinished, AttemptStarted, Hooks, RunFinished
from .inbox import Message
from .messages import CancelOn, RunState
from .retry import Retry
from .runs import RunInfo
from .status import RunStatus
from .streams import Chunk, Progress
from .task import Task, TaskCall
from .workflow import Workflow

__all__ = [
    "AsyncRunHandle",
    "AttemptFinished",
    "AttemptStarted",
    "Batch",
    "CancelOn",
    "ChildRunError",
    "ChildRunFailed",
    "Chunk",
    "Concurrency",
    "ConfigurationError",
    "DatabaseInterrupted",
    "DatabaseUnavailable",
    "Debounce",
    "Hooks",
    "InputTooLarge",
    "InvalidInput",
    "InvalidRunState",
    "Message",
    "NonDeterminismError",
    "PgQueue",
    "PgQueueError",
    "Progress",
    "RateLimit",
    "RateLimited",
    "Retry",
    "RetryLater",
    "RunContext",
    "RunFailed",
    "RunFinished",
    "RunHandle",
    "RunInfo",
    "RunNotFound",
    "RunState",
    "RunStatus",
    "Schedule",
    "SchemaMissing",
    "SchemaOutdated",
    "Singleton",
    "StreamLimitExceeded",
    "Task",
    "TaskCall",
    "TaskCancelled",
    "TaskDefinitionError",
    "Throttle",
    "UnknownTask",
    "UpdateNotAnswered",
    "UpdateTimedOut",
    "Workflow",
    "WorkflowFailed",
    "current_run",
]
