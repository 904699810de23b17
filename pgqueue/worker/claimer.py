"""Claiming runs: up to the free slots' worth of due runs per round trip, leased to this worker.

The claim itself is `pgqueue.claim` (sql/functions): SKIP LOCKED candidates, priorities,
fairness across concurrency keys, concurrency and rate limits, all decided in the database.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..ops import Op, statement


@dataclass(frozen=True)
class Claimed:
    """A run leased to this worker for one attempt."""

    id: int
    task: str
    #: the stored input as JSON text, decoded by the executor (codec.loads_bounded)
    input: str
    attempt: int
    failures: int
    expired: bool
    queue: str | None = None
    #: read only when tracing is on (see tracing.py)
    trace_context: dict[str, str] | None = None


def claim_op(worker_id: str, queues: list[str], limit: int, lease: float,
             labels: list[str] | None = None) -> Op[list[Claimed]]:
    """`labels`: the worker's placement labels (worker/placement.py), None without any."""
    rows = yield statement("worker.claim", {"queues": queues, "limit": limit, "worker": worker_id,
                                            "lease_s": lease, "labels": labels}, row=Claimed, custom_plan=True)
    return rows


def with_trace_contexts_op(claimed: list[Claimed]) -> Op[list[Claimed]]:
    """The runs with their trace context, read in one query (tracing only: the claim itself
    stays as narrow as it is when tracing is off)."""
    rows = yield statement("worker.trace_contexts", {"ids": [run.id for run in claimed]}, custom_plan=True)
    # a context that could not be decoded (UndecodableJSON) is dropped: it only links spans
    found = {run_id: context for run_id, context in rows if isinstance(context, dict)}
    return [replace(run, trace_context=found[run.id]) if run.id in found else run for run in claimed]
