"""The worker's side of placement (docs/placement.md): the labels it claims with, what it
advertises, and the slots its runs take.

A run of a task declared with `slots=N` takes N of the worker's `concurrency` slots: the claim
takes only what fits the free slots (sql/functions/placement.sql), and the worker starts a run
it holds only once its slots are free. With no such task, the counts are the plain run counts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Protocol

from ..app import PgQueue
from ..errors import ConfigurationError
from ..ops import Op, statement
from ..placement import label_entries, worker_claim_labels
from .claimer import Claimed
from .prefetch import ClaimAhead


class Running(Protocol):
    """A running run as the worker keeps it (worker._Running)."""

    @property
    def run(self) -> Claimed: ...


class Slots:
    """The slots runs take on one worker."""

    def __init__(self, app: PgQueue, concurrency: int) -> None:
        self.concurrency = concurrency
        #: tasks whose runs take more than one slot
        self.cost = {name: task.settings.slots for name, task in app.tasks.items() if task.settings.slots > 1}
        too_big = sorted(f"{name} ({slots} slots)" for name, slots in self.cost.items() if slots > concurrency)
        if too_big:
            raise ConfigurationError(
                f"this worker has {concurrency} slots (--concurrency) and these tasks need more for one run: "
                f"{', '.join(too_big)}; raise the concurrency or lower the task's slots=")

    def _used(self, runs: Iterable[Claimed]) -> int:
        return sum(self.cost.get(run.task, 1) for run in runs)

    def held(self, running: Mapping[int, Running], ahead: ClaimAhead) -> int:
        """Slots taken by the runs running and those in hand."""
        if not self.cost:
            return len(running) + len(ahead)
        return self._used(entry.run for entry in running.values()) + self._used(ahead.runs())

    def fits(self, run: Claimed, running: Mapping[int, Running]) -> bool:
        """Whether RUN can start beside those RUNNING."""
        if not self.cost:
            return len(running) < self.concurrency
        return self._used(entry.run for entry in running.values()) + self.cost.get(run.task, 1) <= self.concurrency


def claim_labels(labels: Mapping[str, str], version: str | None) -> list[str] | None:
    return worker_claim_labels(labels, version)


def advertise_op(worker_id: str, labels: Mapping[str, str], version: str | None) -> Op[None]:
    if labels or version is not None:
        yield statement("placement.worker_labels", {"id": worker_id, "labels": label_entries("labels", labels),
                                                    "version": version})
