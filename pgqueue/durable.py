"""Durable execution inside a run: the step history of an attempt, durable sleep, events, children.

A step runs once per run: its result is stored keyed by (run, name#n) and any later attempt of
the same run gets the stored result back instead of running it again. Steps are numbered in
call order; if a replay calls a different step at some position than the history recorded
(the code changed under a running run), it fails with NonDeterminismError.

Everything here is an operation (a generator of statements, see `ops`): the run context drives
them sync or async, so each decision is written once. Every write is fenced by the run's
attempt and worker (see sql/queries/durable.sql).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, TypeVar, cast

from .codec import decoded
from .enqueue import EnqueueOptions, enqueue_op
from .errors import ChildRunError, ChildRunFailed, NonDeterminismError, RunTakenOver, Suspended
from .ops import Op, Statement, statement
from .status import RunStatus

T = TypeVar("T")

SUSPENDED = object()  # what an operation returns when it suspended the run


def raise_if_suspended(value: T) -> T:
    """Raise Suspended once the transaction that suspended the run has committed (raising
    inside the operation would roll the suspension back)."""
    if value is SUSPENDED:
        raise Suspended()
    return value


class CheckpointWriter(Protocol):
    """Records step checkpoints of many runs together (the worker's step writer)."""

    async def record(self, fence: dict[str, Any], key: str, seq: int, name: str, status: str,
                     output: Any, error: dict[str, Any] | None, duration: float) -> int | None: ...


@dataclass(frozen=True)
class Recorded:
    seq: int
    step_key: str
    status: str
    output: Any
    error: dict[str, Any] | None
    attempts: int


@dataclass(frozen=True)
class Plan:
    """Where a step call stands: its key and sequence, and what the history holds for it."""

    seq: int
    key: str
    name: str
    recorded: Recorded | None

    @property
    def done(self) -> bool:
        return self.recorded is not None and self.recorded.status == RunStatus.SUCCEEDED


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), default=str)


def _taken_over(run: Any) -> RunTakenOver:
    return RunTakenOver(f"run {run} is no longer running here")


class Durable:
    """The step history of one attempt of one run, and the operations on it."""

    def __init__(self, run_id: int, attempt: int, worker_id: str, writer: CheckpointWriter | None = None,
                 logs: Callable[[], str | None] = lambda: None) -> None:
        self.fence: dict[str, Any] = {"run": run_id, "attempt": attempt, "worker": worker_id}
        self.writer = writer
        self.logs = logs
        self._history: dict[int, Recorded] | None = None
        self.db_now: datetime | None = None
        self._next_seq = 0
        self._per_name: Counter[str] = Counter()
        #: the patch markers recorded for the run (versioning.py), and the decisions of this attempt
        self.markers: set[str] = set()
        self.patches: dict[str, bool] = {}

    @property
    def replaying(self) -> bool:
        """Whether the history holds steps past the current position (a replay not caught up)."""
        return self._history is not None and any(seq >= self._next_seq for seq in self._history)

    # -- planning (no I/O beyond loading the history once) ---------------------------------

    def load_op(self) -> Op[dict[int, Recorded]]:
        """The run's step history, loaded once per attempt; patch markers (keys without "#",
        see versioning.py) are kept apart: they take no place in the sequence."""
        if self._history is None:
            self._history = {}
            if self.fence["attempt"] > 1:  # a first attempt has no history: save the round trip
                rows = yield statement("durable.load_steps", self.fence, row=dict, custom_plan=True)
                for row in rows:
                    decoded(row["output"])  # a step output written around check_payload: InvalidInput
                    recorded = Recorded(**{k: v for k, v in row.items() if k != "db_now"})
                    if "#" in recorded.step_key:
                        self._history[recorded.seq] = recorded
                    else:
                        self.markers.add(recorded.step_key)
                self.db_now = rows[0]["db_now"] if rows else None
        return self._history

    @property
    def next_seq(self) -> int:
        """The place in the sequence the next step will take."""
        return self._next_seq

    def plan_op(self, name: str) -> Op[Plan]:
        history = yield from self.load_op()
        seq = self._next_seq
        self._next_seq += 1
        key = f"{name}#{self._per_name[name]}"
        self._per_name[name] += 1
        recorded = history.get(seq)
        if recorded is not None and recorded.step_key != key:
            raise NonDeterminismError(
                f"run {self.fence['run']}: step {seq} was recorded as {recorded.step_key!r} but the code now calls "
                f"{key!r}; the task's code changed under a running run. Keep the old path for runs that started "
                "before the change behind `if ctx.patched(\"change-id\")` (docs/versioning.md), or deploy the "
                "change under a new task name (e.g. summarize_v2), or replay the run from the start "
                "(`pgqueue runs replay ID --from-start`)")
        return Plan(seq, key, name, recorded)

    def _record(self, plan: Plan, status: str, output: Any = None, error: dict[str, Any] | None = None,
                duration: float = 0.0, event_id: int | None = None) -> Statement:
        return statement("durable.record_step", {
            **self.fence, "key": plan.key, "seq": plan.seq, "name": plan.name, "status": status,
            "output": None if output is None else _json(output), "error": None if error is None else _json(error),
            "duration": duration, "event_id": event_id})

    def record_op(self, plan: Plan, status: str, output: Any = None, error: dict[str, Any] | None = None,
                  duration: float = 0.0, event_id: int | None = None) -> Op[int]:
        rows = yield self._record(plan, status, output, error, duration, event_id)
        if not rows:
            raise _taken_over(self.fence["run"])
        return int(rows[0][0])

    def suspend_op(self, status: str, wake_at: datetime | None, reason: str) -> Op[None]:
        """The run stops running without finishing (sleeping or waiting), holding no slot."""
        rows = yield statement("durable.suspend", {**self.fence, "status": status, "wake_at": wake_at,
                                                   "reason": reason, "logs": self.logs()})
        if not rows:
            raise _taken_over(self.fence["run"])

    # -- durable sleep ---------------------------------------------------------------------

    def sleep_op(self, seconds: float, until: datetime | None = None) -> Op[object]:
        """Sleep `seconds`, or until `until` when given; the wake time is computed by the
        database (its clock, not the worker's). Returns SUSPENDED when the run was suspended:
        the caller raises Suspended once the transaction has committed (raising inside it
        would roll the suspension back)."""
        plan = yield from self.plan_op("sleep")
        if plan.done:
            return None
        if plan.recorded is not None:  # an earlier attempt started this sleep
            wake_at = datetime.fromisoformat(plan.recorded.output["wake_at"])
            if self.db_now is not None and wake_at <= self.db_now:
                if not (yield statement("durable.end_sleep", {**self.fence, "key": plan.key})):
                    raise _taken_over(self.fence["run"])
                return None
        else:
            rows = yield statement("durable.begin_sleep", {**self.fence, "key": plan.key, "seq": plan.seq,
                                                           "seconds": seconds, "until": until})
            if not rows:
                raise _taken_over(self.fence["run"])
            wake_at = rows[0][0]
        yield from self.suspend_op(RunStatus.SLEEPING, wake_at, f"durable sleep until {wake_at.isoformat()}")
        return SUSPENDED

    # -- events ----------------------------------------------------------------------------

    def wait_op(self, name: str, key: str, timeout: float | None, default: Any) -> Op[Any]:
        """Take the next event (name, key) this run has not taken yet (a mailbox per run, in
        send order, see durable.find_event), or wait for it. Run in one transaction: the event
        lock makes a concurrent send either be found here or find this wait registered, and the
        step that records the event is the run's new place in its mailbox. A replay returns the
        event the step recorded."""
        plan = yield from self.plan_op(f"event:{name}")
        if plan.done:
            return cast(Any, plan.recorded).output
        args = {**self.fence, "key": plan.key, "seq": plan.seq, "name": name, "event_key": key}
        yield statement("durable.event_lock", args)
        [wait] = (yield statement("durable.wait_state", args, row=dict)) or [None]
        if wait is not None and wait["timed_out"]:  # registered by an earlier attempt, and timed out
            yield statement("durable.drop_wait", args)
            yield from self.record_op(plan, RunStatus.SUCCEEDED, default)
            return default
        found = yield statement("durable.find_event", args)
        if found:
            [(event_id, payload)] = found
            decoded(payload)
            yield statement("durable.drop_wait", args)
            yield from self.record_op(plan, RunStatus.SUCCEEDED, payload, event_id=event_id)
            return payload
        timeout_at = wait["timeout_at"] if wait is not None else None
        if wait is None:
            rows = yield statement("durable.register_wait", {**args, "timeout": timeout})
            if not rows:
                raise _taken_over(self.fence["run"])
            timeout_at = rows[0][0]
        yield from self.suspend_op(RunStatus.WAITING, timeout_at, f"waiting for event {name!r} key {key!r}")
        return SUSPENDED


    # -- child runs ------------------------------------------------------------------------

    def spawn_op(self, task: str, inputs: list[str], queue: str, priority: int,
                 flow: tuple[Sequence[str] | None, Sequence[str] | None] = (None, None),
                 deadline: float | None = None) -> Op[list[int]]:
        """Enqueue children in the same transaction as the step that records them: a replay of
        the parent returns the same ids and never spawns twice."""
        plan = yield from self.plan_op(f"spawn:{task}")
        if plan.done:
            return _spawned_ids(cast(Recorded, plan.recorded).output)
        run = self.fence["run"]
        keys = [f"{run}/{plan.key}/{i}" for i in range(len(inputs))]
        found = yield from enqueue_op(task, inputs, EnqueueOptions(), default_queue=queue,
                                      default_priority=priority, idempotency_keys=keys, parent_id=int(run), flow=flow,
                                      deadline=deadline)
        created = sum(1 for _, was_created in found if was_created)
        if not (yield statement("durable.add_children", {**self.fence, "n": created})):
            raise _taken_over(run)
        ids = [run_id for run_id, _ in found]
        yield from self.record_op(plan, RunStatus.SUCCEEDED, {"id_ranges": _id_ranges(ids)})
        return ids

    def gather_op(self, ids: list[int], return_exceptions: bool = False) -> Op[object]:
        """Outcomes of children `ids`, in order, once every child of this run has finished;
        until then the run waits (no slot held) and the last child to finish wakes it.

        The step records only how many children were gathered and a digest of their ids (never
        their results: 100,000 results would not fit in one step output); the results are read
        from the children, a page at a time. `return_exceptions`: a failed child's place holds a
        `ChildRunError` instead of the gather raising `ChildRunFailed`."""
        plan = yield from self.plan_op("gather")
        if plan.done:
            recorded = cast(Recorded, plan.recorded).output
            if isinstance(recorded, list):  # recorded by an earlier version: the results themselves
                return recorded
            if recorded != _gathered(ids):
                raise NonDeterminismError(
                    f"run {self.fence['run']}: step {plan.key} gathered other child runs than the code now "
                    "asks for; gather the ids returned by spawn, in the same order")
            return (yield from self._children_outcomes(ids, return_exceptions))
        pending = (yield statement("durable.pending_children", self.fence))[0][0]
        if pending > 0:
            yield from self.suspend_op(RunStatus.WAITING, None, f"waiting for {pending} child run(s)")
            return SUSPENDED
        outcomes = yield from self._children_outcomes(ids, return_exceptions)
        yield from self.record_op(plan, RunStatus.SUCCEEDED, _gathered(ids))
        return outcomes

    def _children_outcomes(self, ids: list[int], return_exceptions: bool) -> Op[list[Any]]:
        """The children's results in the order of `ids`, read GATHER_PAGE at a time."""
        outcomes: list[Any] = []
        failed: list[ChildRunError] = []
        for start in range(0, len(ids), GATHER_PAGE):
            page = ids[start:start + GATHER_PAGE]
            rows = yield statement("durable.children_outcomes", {"ids": page}, custom_plan=True)
            if len(rows) != len(page):
                found = {row[0] for row in rows}
                missing = [i for i in page if i not in found]
                raise ChildRunFailed(f"{len(missing)} child run(s) no longer exist (e.g. {missing[:5]}): "
                                     "pruned by retention, or not children of this run")
            for run_id, status, result, error in rows:
                if status == RunStatus.SUCCEEDED:
                    outcomes.append(decoded(result))
                    continue
                child = ChildRunError(run_id, status, error)
                outcomes.append(child)
                if not return_exceptions:
                    failed.append(child)
        if failed:
            detail = "; ".join(str(child) for child in failed[:5])
            raise ChildRunFailed(f"{len(failed)} of {len(ids)} child runs did not succeed ({detail})")
        return outcomes


def _id_ranges(ids: list[int]) -> list[list[int]]:
    """`ids` as [first, count] runs of consecutive ids: one bulk insert numbers its children
    consecutively, so 100,000 ids take a few bytes in the spawn's step, not a megabyte."""
    ranges: list[list[int]] = []
    for run_id in ids:
        if ranges and ranges[-1][0] + ranges[-1][1] == run_id:
            ranges[-1][1] += 1
        else:
            ranges.append([run_id, 1])
    return ranges


def _spawned_ids(recorded: Any) -> list[int]:
    if isinstance(recorded, list):  # recorded by an earlier version: the ids themselves
        return [int(run_id) for run_id in recorded]
    return [first + i for first, count in recorded["id_ranges"] for i in range(count)]


#: children read per statement by a gather
GATHER_PAGE = 5000


def _gathered(ids: list[int]) -> dict[str, Any]:
    """What a gather's step records: how many children, and a digest of their ids."""
    digest = hashlib.sha256(",".join(map(str, ids)).encode()).hexdigest()
    return {"children": len(ids), "ids_sha256": digest}


def send_event_op(name: str, key: str = "", payload: Any = None) -> Op[int]:
    rows = yield statement("durable.send_event", {"name": name, "event_key": key, "payload": _json(payload or {})})
    return int(rows[0][0])
