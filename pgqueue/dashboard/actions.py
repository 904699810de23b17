"""The dashboard's buttons: each calls the same app function as the CLI, after checking that the
run's (or schedule's, or queue's) state allows it, and answers a sentence for the page."""

from __future__ import annotations

import json
from collections.abc import Mapping

from ..cron import set_enabled_op
from ..errors import InvalidRunState
from ..queues import set_queue_paused_op
from ..runs import get_run_op
from ..status import FINAL, UNSUCCESSFUL
from .pages import Dashboard
from .queries import waits_op

RUN_ACTIONS = ("retry", "replay", "cancel", "send_event")


class ActionRefused(InvalidRunState):
    """The state does not allow the action, or its form was incomplete."""


def run_action(dash: Dashboard, run_id: int, action: str, form: Mapping[str, str]) -> str:
    """Do `action` on a run; raises RunNotFound, or ActionRefused saying why not."""
    app = dash.app
    status = app.db.execute(get_run_op(run_id)).status
    if action in ("retry", "replay"):
        if status not in UNSUCCESSFUL:
            raise ActionRefused(f"run {run_id} is {status}: only failed, cancelled or dead runs can be "
                                f"{'retried' if action == 'retry' else 'replayed'}")
        if action == "retry":
            app.retry(run_id)
            return f"run {run_id} queued again from its failed step"
        app.replay(run_id, from_start=True)
        return f"run {run_id} queued again from the start"
    if action == "cancel":
        if status in FINAL:
            raise ActionRefused(f"run {run_id} is {status}: a finished run cannot be cancelled")
        outcome = app.cancel(run_id)
        return (f"run {run_id} is running: its worker was asked to stop it" if outcome == "cancel_requested"
                else f"run {run_id} cancelled")
    if action == "send_event":
        return _send_event(dash, run_id, status, form)
    raise ActionRefused(f"unknown action {action!r}; one of {', '.join(RUN_ACTIONS)}")


def _send_event(dash: Dashboard, run_id: int, status: str, form: Mapping[str, str]) -> str:
    """Send the event one of the run's waits is waiting for; only a waiting run, only its own waits,
    so that a button on one run's page cannot wake another run."""
    if status != "waiting":
        raise ActionRefused(f"run {run_id} is {status}: only a waiting run can be sent an event from its page")
    name, key = form.get("event", ""), form.get("key", "")
    waits = dash.app.db.execute(waits_op(run_id))
    if (name, key) not in waits:
        raise ActionRefused(f"run {run_id} is not waiting for event {name!r} with key {key!r}")
    try:
        payload = json.loads(form.get("payload") or "{}")
    except json.JSONDecodeError as exc:
        raise ActionRefused(f"the payload is not valid JSON ({exc.msg} at character {exc.pos})") from None
    woken = dash.app.send_event(name, key, payload)
    return f"event {name!r} (key {key!r}) sent: {woken} waiting run(s) woken"


def queue_action(dash: Dashboard, queue: str, action: str) -> str:
    if not queue:
        raise ActionRefused("name the queue to pause")
    _check(action, ("pause", "resume"), f"queue {queue!r}")
    dash.app.db.execute(set_queue_paused_op(queue, action == "pause"))
    return f"queue {queue!r} " + ("paused: its runs stay queued" if action == "pause" else "resumed")


def cron_action(dash: Dashboard, name: str, action: str) -> str:
    _check(action, ("pause", "resume", "trigger"), f"schedule {name!r}")
    if action == "trigger":
        return f"schedule {name!r} triggered: run {dash.app.cron_trigger(name).id}"
    dash.app.db.execute(set_enabled_op(name, action == "resume"))
    return f"schedule {name!r} " + ("resumed from its next tick" if action == "resume" else "paused")


def _check(action: str, known: tuple[str, ...], subject: str) -> None:
    if action not in known:
        raise ActionRefused(f"unknown action {action!r} for {subject}; one of {', '.join(known)}")
