"""Retry policy of a task: how many attempts, how long to wait between them, what never retries."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from .errors import TaskDefinitionError


@dataclass(frozen=True)
class Retry:
    """Exponential backoff with jitter.

    The delay before attempt n+1 is `initial_delay * factor**(n-1)`, capped at `max_delay`,
    then spread by +/- `jitter` (a fraction) so that runs failing together do not retry together.
    Exceptions in `never_retry` fail the run at once.
    """

    max_attempts: int = 3
    initial_delay: float = 1.0
    factor: float = 2.0
    max_delay: float = 300.0
    jitter: float = 0.2
    never_retry: tuple[type[BaseException], ...] = field(default=())

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise TaskDefinitionError("Retry.max_attempts must be at least 1 (1 means no retry)")
        if self.initial_delay < 0 or self.max_delay < 0 or self.factor < 1:
            raise TaskDefinitionError("Retry delays must be >= 0 and factor >= 1")
        if not 0 <= self.jitter <= 1:
            raise TaskDefinitionError("Retry.jitter is a fraction between 0 and 1")

    def delay(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based)."""
        base = min(self.max_delay, self.initial_delay * self.factor ** max(0, attempt - 1))
        spread = base * self.jitter * (2 * rand() - 1)
        return max(0.0, min(self.max_delay, base + spread))

    def should_retry(self, attempt: int, error: BaseException) -> bool:
        return attempt < self.max_attempts and not isinstance(error, self.never_retry)


NO_RETRY = Retry(max_attempts=1)
