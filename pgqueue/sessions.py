"""Keyed sessions: one invocation per (session, key) at a time, in arrival order, with a
durable state per key (`ctx.state`).

How it holds (docs/sessions.md has the user's side):

- Admission is decided in the database, on every path that queues a run: a run of a session
  enters `ready` only while it holds its key (`pgqueue.session_keys.active_run`); otherwise it
  waits in `pgqueue.session_inbox`, in arrival order, with no row any claim could see. When
  the holder becomes final (outcome, cancel, expiry, dead), the next one in the inbox takes the
  key (triggers in sql/functions/triggers.sql). A retried, rescued, sleeping or waiting
  invocation keeps the key, so a later invocation never overtakes it.
- The state is exactly-once by replay, the same way step results are: each attempt starts
  from the state the invocation started with (`base_state`, set by its first attempt), and the
  task's code re-applies its changes as it replays its steps, which return their stored
  results. What the attempt saves (after each step's checkpoint, with each suspension, before
  its outcome) is a whole document, never an increment, so saving it again is harmless and a
  crash anywhere loses nothing and applies nothing twice. Saves are fenced by the attempt and
  the key: a taken-over attempt's late save is refused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .codec import decoded
from .errors import InvalidInput, RunTakenOver
from .ops import Op, statement


class SessionState:
    """The state of the session key an attempt holds (`ctx.state` is its `data`)."""

    def __init__(self, session: str, fence: dict[str, Any]) -> None:
        self.session = session
        self.fence = fence
        self.key = ""
        self.data: dict[str, Any] = {}
        self._saved: str | None = None

    def begin_op(self) -> Op[None]:
        """Load the state this attempt replays from (fenced: the run must hold its key)."""
        rows = yield statement("sessions.begin", self.fence, row=dict)
        if not rows:
            raise RunTakenOver(f"run {self.fence['run']} is no longer running here")
        if not rows[0]["holds"]:
            why = ("it has no key: it was enqueued before any worker declared the session (plain SQL "
                   "with a queue named); enqueue it again" if rows[0]["key"] is None else
                   f"key {rows[0]['key']!r} is held by another invocation")
            raise InvalidInput(f"run {self.fence['run']} of session {self.session!r} cannot start: {why}")
        self.key = rows[0]["key"]
        base = decoded(rows[0]["base_state"])
        self.data = dict(base) if isinstance(base, dict) else {}
        self._saved = _encode(self.data, self.session, self.key)

    def save_op(self) -> Op[None]:
        """Save the state if it changed since the last save (a whole document)."""
        text = _encode(self.data, self.session, self.key)
        if text == self._saved:
            return
        rows = yield statement("sessions.save", {**self.fence, "session": self.session, "key": self.key,
                                                 "state": text})
        if not rows:
            raise RunTakenOver(f"run {self.fence['run']} is no longer running here")
        self._saved = text


def _encode(data: Any, session: str, key: str) -> str:
    if not isinstance(data, dict):
        raise InvalidInput(f"ctx.state of session {session!r} must stay a dict, not {type(data).__name__}")
    try:
        return json.dumps(data, separators=(",", ":"), sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"ctx.state of session {session!r} key {key!r} cannot be stored as JSON ({exc}); "
                           "keep only JSON values in it (str, numbers, bools, None, lists, dicts)") from None


def register_op(name: str, key_field: str) -> Op[None]:
    yield statement("sessions.register", (name, key_field))


def state_op(session: str, key: str) -> Op[dict[str, Any]]:
    """The state of `key` in `session` as of its last checkpoint ({} for a key never invoked);
    UnknownTask for a session no worker declared."""
    rows = yield statement("sessions.state", {"session": session, "key": key})
    value = decoded(rows[0][0])
    return dict(value) if isinstance(value, dict) else {}


@dataclass(frozen=True)
class SessionInfo:
    name: str
    key_field: str
    keys: int
    active: int
    waiting: int


@dataclass(frozen=True)
class SessionKey:
    key: str
    active_run: int | None
    invocations: int
    updated_at: datetime
    state_bytes: int
    waiting: int


def list_sessions_op() -> Op[list[SessionInfo]]:
    rows = yield statement("sessions.list_sessions", row=SessionInfo)
    return rows


def list_keys_op(session: str, after: str = "", limit: int = 100) -> Op[list[SessionKey]]:
    rows = yield statement("sessions.list_keys", {"session": session, "after": after, "limit": limit},
                           row=SessionKey)
    return rows
