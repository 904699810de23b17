"""Queues and the workers serving them: what is waiting, running and failing, and pausing."""

from __future__ import annotations

from dataclasses import dataclass

from .ops import Op, statement


@dataclass(frozen=True)
class QueueStatus:
    queue: str
    queued: int
    scheduled: int
    running: int
    failed_last_hour: int
    oldest_wait_s: float | None
    paused: bool = False


@dataclass(frozen=True)
class WorkerStatus:
    name: str
    host: str
    pid: int
    queues: list[str]
    concurrency: int
    heartbeat_age_s: float
    running: int
    #: placement (docs/placement.md): 'name=value' entries, and the code version
    labels: list[str]
    version: str | None


def status_op() -> Op[tuple[list[QueueStatus], list[WorkerStatus]]]:
    queues = yield statement("queues.queue_status", row=QueueStatus)
    workers = yield statement("queues.workers_alive", row=WorkerStatus)
    return queues, workers


def set_queue_paused_op(queue: str, paused: bool) -> Op[None]:
    yield statement("queues.pause_queue" if paused else "queues.resume_queue", (queue,))
