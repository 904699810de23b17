"""The states of a run, named once for the library, the CLI and the dashboard."""

from __future__ import annotations

from enum import StrEnum


class RunStatus(StrEnum):
    """Where a run stands. A StrEnum: it compares equal to the text stored in `pgqueue.runs`.

    queued -> running -> succeeded | failed | cancelled, or dead after too many crash
    recoveries; a durable run in between may be sleeping (durable sleep) or waiting (for an
    event, its children or a workflow's nodes), holding no worker slot.
    """

    QUEUED = "queued"
    RUNNING = "running"
    SLEEPING = "sleeping"
    WAITING = "waiting"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    DEAD = "dead"

    @property
    def final(self) -> bool:
        """The run is over: nothing happens to it unless someone retries or replays it."""
        return self in FINAL

    @property
    def retryable(self) -> bool:
        """The run ended without a result, so `retry` / `replay` may queue it again."""
        return self in UNSUCCESSFUL


#: over for good (what a handle waits for)
FINAL = frozenset({RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED, RunStatus.DEAD})
#: over without a result
UNSUCCESSFUL = frozenset({RunStatus.FAILED, RunStatus.CANCELLED, RunStatus.DEAD})
#: every status's name, in lifecycle order (for choices and filters)
NAMES: tuple[str, ...] = tuple(status.value for status in RunStatus)
