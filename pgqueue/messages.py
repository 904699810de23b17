"""Talking to running runs from outside: messages (signals), updates, queries, cancel on event.

- A message (`app.send(run_id, name, payload)`, SQL `pgqueue.send_message`) goes to the run's
  mailbox; the run takes it with `ctx.receive(name)` (pgqueue/inbox.py) in send order, each once.
- An update (`app.update(run_id, name, payload, timeout=...)`) is a message whose sender waits
  for the run's reply (`message.reply(value)` inside the run). The waiting decisions live in
  `_Replying`, which does no I/O; `update_sync` / `update_async` only block or await.
- A query reads the state the run published last (`ctx.set_state`), never waking the run.
- `CancelOn`: a task's unfinished runs are cancelled (with their children) by an event whose
  payload matches their input (`pgqueue.cancel_on_event`, called by `pgqueue.send_event`).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from .codec import check_name, decoded
from .database import DONE_CHANNEL
from .errors import InvalidInput, TaskDefinitionError, UpdateNotAnswered, UpdateTimedOut
from .ops import Op, statement
from .runs import get_run_op
from .status import FINAL, RunStatus

if TYPE_CHECKING:
    from .database import Database

_FIRST_POLL = 0.05  # seconds to wait for a signal before reading the reply again; doubles up to:
_MAX_POLL = 1.0
#: seconds `app.update` waits for the run's reply by default
UPDATE_TIMEOUT = 30.0


def message_json(value: Any, what: str) -> str:
    """VALUE as the JSON text sent to the database, or a clear InvalidInput."""
    try:
        return json.dumps(value, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"{what} must be a JSON value (dict, list, str, number, bool, None): {exc}") from None


def reply_channel(run_id: int) -> str:
    """The NOTIFY channel on which replies to updates of run RUN_ID are announced."""
    return f"pgqueue_reply_{int(run_id)}"


@dataclass(frozen=True)
class CancelOn:
    """`@app.task(cancel_on=CancelOn("order.cancelled", match="order_id"))`: when that event is
    sent, the task's queued, running, sleeping and waiting runs whose input has the same value at
    `match` as the event's payload are cancelled with their children (a running one is asked to
    stop). `match=None`: every unfinished run of the task."""

    event: str
    match: str | None = None

    def __post_init__(self) -> None:
        check_name("event", self.event, TaskDefinitionError)
        if self.match is not None and (not isinstance(self.match, str) or not self.match):
            raise TaskDefinitionError(f"CancelOn({self.event!r}): match= names a field of the task's input "
                                      f"and of the event's payload, e.g. match='order_id' (got {self.match!r})")


def cancel_rules(task: str, cancel_on: CancelOn | Sequence[CancelOn] | None) -> tuple[CancelOn, ...]:
    """A task's `cancel_on=` as a tuple of rules, or TaskDefinitionError."""
    if cancel_on is None:
        return ()
    rules = (cancel_on,) if isinstance(cancel_on, CancelOn) else tuple(cancel_on)
    if not all(isinstance(rule, CancelOn) for rule in rules):
        raise TaskDefinitionError(f"task {task!r}: cancel_on= takes pgqueue.CancelOn(event, match=...) "
                                  f"or a list of them, not {cancel_on!r}")
    if len({rule.event for rule in rules}) != len(rules):
        raise TaskDefinitionError(f"task {task!r}: cancel_on= names one event twice")
    return rules


def check_match_fields(task: str, rules: Sequence[CancelOn], fields: Collection[str], extra_allowed: bool) -> None:
    """Refuse a `match` that names no field of the task's input (it would never match)."""
    for rule in rules:
        if rule.match is not None and rule.match not in fields and not extra_allowed:
            raise TaskDefinitionError(f"task {task!r}: CancelOn({rule.event!r}, match={rule.match!r}) names no "
                                      f"field of its input (its fields: {', '.join(sorted(fields)) or 'none'})")


def sync_cancel_on_op(declared: dict[str, tuple[CancelOn, ...]]) -> Op[None]:
    """Write the cancel-on-event rules of the tasks registered (task -> rules), removing those
    their code no longer declares."""
    rows = [(rule.event, task, rule.match) for task, rules in declared.items() for rule in rules]
    yield statement("messages.sync_cancel_on", {
        "tasks": list(declared), "events": [r[0] for r in rows], "subscribers": [r[1] for r in rows],
        "matches": [r[2] for r in rows]})


# -- messages and updates ---------------------------------------------------------------------

def send_op(run_id: int, name: str, payload: Any, wants_reply: bool = False) -> Op[int]:
    """Send message `name` to the run; its id. RunNotFound / InvalidRunState (a finished run)."""
    check_name("message", name)
    text = message_json(payload, f"the payload of message {name!r}")
    rows = yield statement("messages.send", {"run": run_id, "name": name, "payload": text,
                                             "wants_reply": wants_reply})
    return int(rows[0][0])


@dataclass(frozen=True)
class ReplyState:
    replied: bool
    reply: Any
    run_status: str


def reply_state_op(message_id: int) -> Op[ReplyState]:
    rows = yield statement("messages.reply_state", {"id": message_id}, row=ReplyState)
    state: ReplyState = rows[0]
    return state


class _Replying:
    """How long to listen before reading an update's reply again, until it came or time is up."""

    def __init__(self, run_id: int, name: str, message_id: int, timeout: float) -> None:
        self.run_id, self.name, self.message_id, self.timeout = run_id, name, message_id, timeout
        self.deadline = time.monotonic() + timeout
        self.poll = _FIRST_POLL

    def after(self, state: ReplyState) -> float | None:
        """Seconds to listen for the next signal; None when the reply is there."""
        if state.replied:
            return None
        if state.run_status in FINAL:
            raise UpdateNotAnswered(
                f"run {self.run_id} ended {state.run_status} without replying to update {self.name!r} "
                f"(message {self.message_id}); the run must call message.reply(value) on the message "
                f"ctx.receive({self.name!r}) returns")
        if state.run_status == "pruned":
            raise UpdateNotAnswered(f"run {self.run_id} was pruned by retention before it replied to update "
                                    f"{self.name!r} (message {self.message_id})")
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise UpdateTimedOut(
                f"run {self.run_id} did not reply to update {self.name!r} (message {self.message_id}) within "
                f"{self.timeout:g}s; the message stays in the run's mailbox, so the run may still take and "
                "answer it later. Is a worker running it, and does it call ctx.receive("
                f"{self.name!r}) and reply? Raise timeout= for slow answers")
        wait = min(self.poll, remaining)
        self.poll = min(_MAX_POLL, self.poll * 2)
        return wait


def _check_timeout(timeout: float) -> float:
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise InvalidInput(f"an update's timeout is a positive number of seconds (got {timeout!r})")
    return float(timeout)


def update_sync(db: Database, run_id: int, name: str, payload: Any, timeout: float = UPDATE_TIMEOUT) -> Any:
    """Send update `name` to the run and return its reply (see `PgQueue.update`)."""
    timeout = _check_timeout(timeout)
    with db.listen(reply_channel(run_id), DONE_CHANNEL) as conn:  # before sending: no reply missed
        message_id = db.execute(send_op(run_id, name, payload, wants_reply=True))
        replying = _Replying(run_id, name, message_id, timeout)
        while True:
            state = db.execute(reply_state_op(message_id))
            if (wait := replying.after(state)) is None:
                return decoded(state.reply)
            if conn is None:  # listening is off: poll
                time.sleep(wait)
                continue
            for _ in conn.notifies(timeout=wait, stop_after=1):
                pass


async def update_async(db: Database, run_id: int, name: str, payload: Any, timeout: float = UPDATE_TIMEOUT) -> Any:
    timeout = _check_timeout(timeout)
    async with db.listen_async(reply_channel(run_id), DONE_CHANNEL) as conn:
        message_id = await db.execute_async(send_op(run_id, name, payload, wants_reply=True))
        replying = _Replying(run_id, name, message_id, timeout)
        while True:
            state = await db.execute_async(reply_state_op(message_id))
            if (wait := replying.after(state)) is None:
                return decoded(state.reply)
            if conn is None:
                await asyncio.sleep(wait)
                continue
            async for _ in conn.notifies(timeout=wait, stop_after=1):
                pass


# -- queries ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class RunState:
    """The state a run published last (`ctx.set_state`)."""

    #: the run's status when the state was read
    status: RunStatus
    #: the published value (None: nothing published yet)
    state: Any
    #: the attempt that published it
    attempt: int | None
    updated_at: datetime | None

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", RunStatus(self.status))


def get_state_op(run_id: int) -> Op[RunState]:
    """The run's published state; RunNotFound for an unknown run."""
    rows = yield statement("messages.state", {"run": run_id}, row=RunState)
    if not rows:
        yield from get_run_op(run_id)  # raises RunNotFound, saying whether retention pruned it
        raise AssertionError("unreachable")
    state: RunState = rows[0]
    return state
