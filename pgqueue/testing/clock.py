"""Time travel in a test database: the clock that pgqueue's SQL reads there, moved at will.

pgqueue decides every time in SQL with `now()` (leases, run_at, sleeps, event timeouts,
schedule-to-start windows, deadlines, cron ticks, retention). In a database prepared by
`install_clock_op` (the testing kit's databases are), `now()` resolves to
`pgqueue_testing.now()`: the transaction's start time plus a shift stored in a one-row table.
`Clock.advance(hours=1)` moves it for every connection at once; production databases never get
this function, so their hot path is untouched.

What the database clock does not move: timers that run in the worker's process (a task's
start-to-close `timeout`, `heartbeat_timeout`, a step's `timeout`) and `time.time()` in user code.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from ..config import connect, connect_async
from ..errors import ConfigurationError
from ..ops import Op, execute_on, execute_on_async, statement


def install_clock_op() -> Op[None]:
    """Give the current database the movable clock (before `migrate`, for column defaults)."""
    yield statement("testing.clock_schema")
    yield statement("testing.clock_table")
    yield statement("testing.clock_function")
    yield statement("testing.clock_search_path")


def _shift_op(by: timedelta) -> Op[datetime]:
    rows = yield statement("testing.clock_shift", {"by": by})
    moved: datetime = rows[0][0]
    return moved


def _now_op() -> Op[datetime]:
    installed = (yield statement("testing.clock_installed"))[0][0]
    if not installed:
        raise ConfigurationError(
            "this database has no test clock: time travel needs a database made by the testing kit "
            "(the pgqueue_dsn fixture, or pgqueue.testing.TestServer.create_database)")
    now: datetime = (yield statement("testing.clock_now"))[0][0]
    return now


def _reset_op() -> Op[None]:
    yield statement("testing.clock_reset")


def _delta(delta: timedelta | float, days: float, hours: float, minutes: float, seconds: float) -> timedelta:
    base = delta if isinstance(delta, timedelta) else timedelta(seconds=delta)
    return base + timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)


class Clock:
    """The clock of a test database: `advance(...)`, `travel_to(when)`, `now()`, `reset()`.

    Each method has an `_async` twin for async tests (same effect, no blocking of the loop).
    Move it between drains: a run running while the clock jumps past its lease is rescued.
    """

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn

    def _run(self, op: Op[datetime]) -> datetime:
        with connect(self.dsn, autocommit=True) as conn:
            return execute_on(conn, op)

    async def _run_async(self, op: Op[datetime]) -> datetime:
        async with await connect_async(self.dsn, autocommit=True) as conn:
            return await execute_on_async(conn, op)

    def now(self) -> datetime:
        """What `now()` says in the test database."""
        return self._run(_now_op())

    async def now_async(self) -> datetime:
        return await self._run_async(_now_op())

    def advance(self, delta: timedelta | float = 0, *, days: float = 0, hours: float = 0, minutes: float = 0,
                seconds: float = 0) -> datetime:
        """Move the clock forward by `delta` (a timedelta or seconds) plus the keyword amounts;
        returns the new now()."""
        return self._run(self._moved(_delta(delta, days, hours, minutes, seconds)))

    async def advance_async(self, delta: timedelta | float = 0, *, days: float = 0, hours: float = 0,
                            minutes: float = 0, seconds: float = 0) -> datetime:
        return await self._run_async(self._moved(_delta(delta, days, hours, minutes, seconds)))

    def travel_to(self, when: datetime) -> datetime:
        """Move the clock to `when` (timezone-aware), forward or back."""
        return self._run(self._to(when))

    async def travel_to_async(self, when: datetime) -> datetime:
        return await self._run_async(self._to(when))

    def reset(self) -> None:
        """Back to the real time."""
        with connect(self.dsn, autocommit=True) as conn:
            execute_on(conn, _reset_op())

    def _moved(self, by: timedelta) -> Op[datetime]:
        yield from _now_op()  # a clear error on a database without the clock
        return (yield from _shift_op(by))

    def _to(self, when: datetime) -> Op[datetime]:
        if when.tzinfo is None or when.utcoffset() is None:
            raise ConfigurationError(f"travel_to needs a timezone-aware datetime, got {when.isoformat()}")
        now = yield from _now_op()
        return (yield from _shift_op(when - now))
