"""Inside a run: taking messages from its mailbox (`ctx.receive`), replying to updates, and
publishing a state for queries (`ctx.set_state`).

A receive is a step: the transaction that takes a message records the step holding its id,
under the run's message lock and fenced like every checkpoint, so each message is taken once,
in send order, and a replay of the run returns the same message without taking another one
(see sql/functions/messages.sql). A receive that finds nothing registers its wait and suspends
the run (no slot held); a send of that name wakes it, and its timeout wakes it too (then the
receive returns None). Operations here are generators of statements, driven by the run context.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, cast

from .codec import check_name, decoded
from .database import Database, engine_call
from .durable import SUSPENDED, Durable
from .errors import InvalidInput, RunTakenOver
from .messages import message_json
from .ops import Op, statement
from .status import RunStatus


@dataclass(frozen=True)
class Message:
    """A message `ctx.receive` took: its id, name and payload; an update's sender waits for
    `reply` (async tasks: `await message.reply(value)`; sync tasks: `message.reply_sync(value)`)."""

    id: int
    name: str
    payload: Any
    sent_at: datetime
    #: sent by `app.update`: its sender waits for the reply
    wants_reply: bool
    _reply: Callable[[Message, Any], Awaitable[bool]] | None = field(default=None, repr=False, compare=False)
    _reply_sync: Callable[[Message, Any], bool] | None = field(default=None, repr=False, compare=False)

    async def reply(self, value: Any) -> bool:
        """Answer the update (any JSON value); True if this call stored the answer, False if an
        earlier execution of the run already did (the first reply wins)."""
        if self._reply is None:
            raise InvalidInput("this message was not taken by ctx.receive in a run")
        return await self._reply(self, value)

    def reply_sync(self, value: Any) -> bool:
        """`reply` for sync tasks."""
        if self._reply_sync is None:
            raise InvalidInput("this message was not taken by ctx.receive in a run")
        return self._reply_sync(self, value)


def check_receive(name: str, timeout: float | None) -> None:
    check_name("message", name)
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                or not timeout >= 0):
        raise InvalidInput(f"receive's timeout is None (wait until a message comes) or seconds >= 0, "
                           f"got {timeout!r}")


def _message(row: dict[str, Any]) -> Message:
    return Message(row["id"], row["name"], decoded(row["payload"]), row["sent_at"], row["wants_reply"])


def receive_op(durable: Durable, name: str, timeout: float | None) -> Op[Any]:
    """The next message `name` of the run's mailbox (a `Message`), None after `timeout` seconds
    without one, or SUSPENDED when the run now waits for it. Run in one transaction."""
    plan = yield from durable.plan_op(f"receive:{name}")
    fence = durable.fence
    if plan.done:  # taken by an earlier execution: the same message again
        taken = cast(dict[str, Any], cast(Any, plan.recorded).output).get("message_id")
        if taken is None:
            return None
        rows = yield statement("messages.get", {"id": taken, "run": fence["run"]}, row=dict)
        return _message(rows[0])
    args = {**fence, "key": plan.key, "name": name, "step_name": plan.name, "timeout": timeout}
    yield statement("messages.lock", args)
    found = yield statement("messages.next", args, row=dict)
    [wait] = (yield statement("messages.wait_state", args, row=dict)) or [None]
    if wait is not None and wait["step_key"] != plan.key:
        wait = None  # left by a receive this run no longer reaches (replayed): replaced below
    if found or (wait is not None and wait["timed_out"]) or (not found and wait is None and timeout == 0):
        if wait is not None:
            yield statement("messages.drop_wait", args)
        message = _message(found[0]) if found else None
        yield from durable.record_op(plan, RunStatus.SUCCEEDED, {"message_id": message.id if message else None})
        return message
    if wait is None:
        rows = yield statement("messages.register_wait", args)
        if not rows:
            raise RunTakenOver(f"run {fence['run']} is no longer running here")
        timeout_at = rows[0][0]
    else:
        timeout_at = wait["timeout_at"]
    yield from durable.suspend_op(RunStatus.WAITING, timeout_at, f"waiting for message {name!r}")
    return SUSPENDED


def reply_op(fence: dict[str, Any], message: Message, value: Any) -> Op[bool]:
    """Store the reply to update `message`; False if the run had already replied."""
    if not message.wants_reply:
        raise InvalidInput(f"message {message.id} ({message.name!r}) was sent with send(), not update(): "
                           "nobody waits for a reply")
    text = message_json(value, f"the reply to message {message.id}")
    rows = yield statement("messages.reply", {**fence, "id": message.id, "reply": text}, row=dict)
    if not rows[0]["fenced"]:
        raise RunTakenOver(f"run {fence['run']} is no longer running here")
    return bool(rows[0]["written"])


def set_state_op(fence: dict[str, Any], state: Any) -> Op[None]:
    """Publish the run's state for queries (replacing the previous one)."""
    text = message_json(state, "a run's state")
    rows = yield statement("messages.set_state", {**fence, "state": text})
    if not rows:
        raise RunTakenOver(f"run {fence['run']} is no longer running here")


def bind(message: Message | None, db: Database, fence: dict[str, Any]) -> Message | None:
    """MESSAGE with its `reply` writing through `db` for the attempt `fence` holds."""
    if message is None:
        return None

    async def reply(message: Message, value: Any) -> bool:
        with engine_call(f"the reply to message {message.id} of run {fence['run']}"):
            return await db.execute_async(reply_op(fence, message, value))

    def reply_sync(message: Message, value: Any) -> bool:
        with engine_call(f"the reply to message {message.id} of run {fence['run']}"):
            return db.execute(reply_op(fence, message, value))

    return replace(message, _reply=reply, _reply_sync=reply_sync)


async def publish_state(db: Database, fence: dict[str, Any], state: Any) -> None:
    with engine_call(f"run {fence['run']}'s state"):
        await db.execute_async(set_state_op(fence, state))


def publish_state_sync(db: Database, fence: dict[str, Any], state: Any) -> None:
    with engine_call(f"run {fence['run']}'s state"):
        db.execute(set_state_op(fence, state))
