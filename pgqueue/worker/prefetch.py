"""Claiming ahead of free slots: how many claimed runs a worker keeps waiting for a slot.

A worker that claims only when a slot is free leaves the slot idle for a claim's round trip
each time; with short runs that round trip, not the work, sets the pace. So the worker keeps a
few claimed runs in hand, as many as finish during about two claim round trips at the current
pace: none when runs take seconds (a claimed run would wait behind them while another worker
may be idle), up to `limit` when they take microseconds. A run held longer than `max_wait`
anyway (the pace changed) is released back to the queue, as if never claimed.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable

from .claimer import Claimed

#: seconds over which the pace of finished runs is measured
PACE_WINDOW = 0.1


class ClaimAhead:
    """The runs claimed ahead of free slots, and how many to keep."""

    def __init__(self, limit: int, max_wait: float = 1.0) -> None:
        self.limit = limit
        self.max_wait = max_wait
        self._held: deque[tuple[Claimed, float]] = deque()
        self._cancelled: set[int] = set()
        self._finished = 0
        self._since = time.monotonic()
        self._pace = 0.0  # runs finished per second
        self._round_trip = 0.0  # seconds per claim

    def __len__(self) -> int:
        return len(self._held)

    def runs(self) -> list[Claimed]:
        return [run for run, _ in self._held]

    def hold(self, runs: Iterable[Claimed]) -> None:
        now = time.monotonic()
        self._held.extend((run, now) for run in runs)

    def peek(self) -> Claimed | None:
        """The run `take` would return next."""
        return self._held[0][0] if self._held else None

    def take(self) -> tuple[Claimed, bool] | None:
        """The oldest run held, and whether its cancellation was requested meanwhile."""
        if not self._held:
            return None
        run, _ = self._held.popleft()
        cancelled = run.id in self._cancelled
        self._cancelled.discard(run.id)
        return run, cancelled

    def drop(self, run_ids: set[int]) -> None:
        """Forget runs this worker lost (rescued elsewhere, failed by their deadline)."""
        self._held = deque(entry for entry in self._held if entry[0].id not in run_ids)

    def cancel(self, run_id: int) -> None:
        self._cancelled.add(run_id)

    def stale(self) -> list[Claimed]:
        """Runs held longer than `max_wait`, removed from hand: to be released."""
        deadline = time.monotonic() - self.max_wait
        stale = [run for run, since in self._held if since < deadline]
        if stale:
            self._held = deque(entry for entry in self._held if entry[1] >= deadline)
        return stale

    def release_all(self) -> list[Claimed]:
        runs = self.runs()
        self._held.clear()
        return runs

    # -- pace --------------------------------------------------------------------------------

    def finished(self) -> None:
        self._finished += 1

    def claimed_in(self, seconds: float) -> None:
        self._round_trip = seconds if not self._round_trip else 0.8 * self._round_trip + 0.2 * seconds

    def wanted(self) -> int:
        """How many runs to keep in hand at the current pace."""
        now = time.monotonic()
        elapsed = now - self._since
        if elapsed >= PACE_WINDOW:
            self._pace = 0.5 * self._pace + 0.5 * self._finished / elapsed
            self._finished, self._since = 0, now
        return min(self.limit, int(2 * self._pace * self._round_trip))
