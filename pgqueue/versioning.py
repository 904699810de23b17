"""Versioning of in-flight durable runs: `ctx.patched("change-id")`, as in Temporal and DBOS.

A durable run replays its step history on every attempt, so a change of the task's code that
moves, adds or removes a step breaks the runs that started before the deploy
(NonDeterminismError). `patched` lets old and new code live side by side in one function:

    if await ctx.patched("summarize-v2"):
        summary = await ctx.step("summarize_v2", summarize_v2, doc)   # new runs
    else:
        summary = await ctx.step("summarize", summarize, doc)         # runs that started before

The rule, at the place P of the run's step sequence where `patched` is called (the place the
next step would take):

- the run has a marker of this patch: True (it took the new path before, and keeps taking it);
- the run's recorded history already reaches P or beyond (a step recorded at P or later,
  finished, failed or sleeping, or an event wait registered there) without the marker: it passed
  this point on code without the patch; False, and it replays the old path;
- otherwise the run reaches P for the first time, on code that has the patch: a marker is
  recorded (a step row keyed `patched:<id>`, committed before `patched` returns) and it is True.

The marker takes no place in the sequence (its key has no "#", so the history load keeps it
apart), so the steps after it keep their numbers whatever path was taken, and removing the
`patched` call later never shifts anyone's history. The decision never changes for a run: True
is its marker, False is its own recorded steps past P, both kept across retries (a replay from
the start deletes both, and the run starts afresh on the new path). A run suspended in a
`gather` has recorded nothing at P yet and so takes the new path.

`deprecate_patch("change-id")` is the next deploy, once no run that started before the patch is
in flight: only the new path remains in the code, and a run that still needs the old one fails
loudly (NonDeterminismError) instead of mixing histories. It records the marker too, so that a
rollback to the code with `patched` keeps new runs on the new path. Remove the call itself once
every run that went through it has finished.
"""

from __future__ import annotations

from .codec import check_name
from .durable import Durable, Plan
from .errors import ConfigurationError, NonDeterminismError
from .ops import Op, statement
from .status import RunStatus

#: the step key prefix of a patch marker; a marker's key has no "#" (a step's key always has one)
MARKER_PREFIX = "patched:"


def marker_key(patch_id: str) -> str:
    """The step key of the marker of `patch_id`, or ConfigurationError for a malformed id."""
    check_name("patch", patch_id, ConfigurationError)  # the name rule: no "#", at most 200 characters
    return MARKER_PREFIX + patch_id


def patched_op(durable: Durable, patch_id: str) -> Op[bool]:
    """Whether the run takes the new path of `patch_id` here (see the module's rule)."""
    key = marker_key(patch_id)
    if patch_id in durable.patches:  # asked twice in one attempt: the same answer
        return durable.patches[patch_id]
    history = yield from durable.load_op()
    here = durable.next_seq
    if key in durable.markers:
        decision = True
    elif any(seq >= here for seq in history) or (yield from _waits_reach_op(durable, here)):
        decision = False
    else:
        plan = Plan(here, key, "patched", None)
        yield from durable.record_op(plan, RunStatus.SUCCEEDED, {"patch": patch_id})
        durable.markers.add(key)
        decision = True
    durable.patches[patch_id] = decision
    return decision


def deprecate_patch_op(durable: Durable, patch_id: str) -> Op[None]:
    """The code keeps only the new path of `patch_id`: NonDeterminismError for a run that took
    the old path (it started before the patch and is still in flight)."""
    if not (yield from patched_op(durable, patch_id)):
        raise NonDeterminismError(
            f"run {durable.fence['run']} started before patch {patch_id!r} and took the old path at this point, "
            "which the code no longer has (deprecate_patch): deploy the code with "
            f"`if ctx.patched({patch_id!r})` and both paths again until such runs have finished, or replay "
            "the run from the start (`pgqueue runs replay ID --from-start`)")


def _waits_reach_op(durable: Durable, here: int) -> Op[bool]:
    """Whether an earlier attempt registered an event wait at place `here` or later (a wait
    records its step only once the event came, but the run had reached it)."""
    if durable.fence["attempt"] == 1:
        return False
    rows = yield statement("versioning.waits_reach", {"run": durable.fence["run"], "seq": here})
    return bool(rows[0][0])
