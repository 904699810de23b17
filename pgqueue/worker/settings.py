"""How a worker runs: its queues, concurrency, leases and intervals."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field

from ..errors import ConfigurationError
from ..placement import check_version, label_entries

#: least default `prefetch`
DEFAULT_PREFETCH = 50


@dataclass
class WorkerSettings:
    """How a worker runs. Defaults suit production; tests shrink the intervals."""

    queues: list[str] = field(default_factory=lambda: ["default"])
    concurrency: int = 10
    #: most runs claimed per round trip (0: as many as there are free slots)
    batch_size: int = 0
    #: most claimed runs kept in hand ahead of free slots, so that a slot that frees never waits
    #: for a claim's round trip (None: the concurrency, at least 50 and at most 100; 0: off).
    #: The worker keeps fewer when runs are slow (see worker/prefetch.py); they stay leased to it
    prefetch: int | None = None
    name: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    #: seconds a claimed run stays leased without a heartbeat
    lease: float = 30.0
    #: seconds between heartbeats (extending leases)
    heartbeat: float = 5.0
    #: seconds between claims when no notification arrives (also how late a scheduled run may start)
    poll_interval: float = 1.0
    #: seconds to let running runs finish on shutdown before handing them back
    grace_period: float = 30.0
    #: crash recoveries after which a run is marked dead instead of run again
    max_recoveries: int = 3
    #: attempts cut off by database failures (connection dropped, server restarted) after which
    #: a run fails; such attempts do not use up the task's retry attempts
    max_interruptions: int = 10
    #: exit once no due run is left (for scripts, demos and tests)
    burst: bool = False
    #: serve Prometheus metrics on this port (None: off); any host but loopback needs a token
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    metrics_token: str | None = None
    #: seconds between pruning passes (finished runs past their retention); 0 turns it off
    prune_interval: float = 60.0
    #: runs (and trees, and events) removed per batch, each batch its own short transaction
    prune_batch_size: int = 1000
    #: most batches per pass (a pass also stops after half the interval, or at a batch not full)
    prune_batches: int = 100
    #: placement (docs/placement.md): labels this worker has ({"gpu": "a100"}), and the code
    #: version it runs (runs of tasks with pin_version=True stay on the version that started them)
    labels: dict[str, str] = field(default_factory=dict)
    version: str | None = field(default_factory=lambda: os.environ.get("PGQUEUE_WORKER_VERSION") or None)

    def __post_init__(self) -> None:
        label_entries("worker labels", self.labels)  # refuses bad labels now
        check_version(self.version)
        if self.concurrency < 1:
            raise ConfigurationError("concurrency must be at least 1")
        if not self.queues:
            raise ConfigurationError("a worker needs at least one queue")
        if self.prune_interval < 0 or self.prune_batch_size < 1 or self.prune_batches < 1:
            raise ConfigurationError(
                "prune_interval must be >= 0 (0: off), prune_batch_size and prune_batches at least 1")
        if self.prefetch is not None and self.prefetch < 0:
            raise ConfigurationError(f"prefetch must be >= 0 (0: off), not {self.prefetch}")
        if self.heartbeat >= self.lease:
            raise ConfigurationError(
                f"heartbeat ({self.heartbeat:g}s) must be shorter than the lease ({self.lease:g}s), "
                "or leases expire between heartbeats")

    def prefetch_limit(self) -> int:
        # at least 50 by default: a small concurrency must not cap the batch (a claim's round trip
        # is paid per batch), while the pace-based count keeps runs in hand few when runs are slow
        return min(max(self.concurrency, DEFAULT_PREFETCH), 100) if self.prefetch is None else self.prefetch
