"""Versioning of in-flight durable runs: `ctx.patched` across a deploy (an old and a new worker's
code over the same runs), decided once per run; `deprecate_patch`; bad patch ids."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from pgqueue import ConfigurationError, PgQueue, Retry, current_run
from pgqueue.testing import Clock, drain

pytestmark = pytest.mark.timeout(120)



def _apps(dsn: str, version: str) -> tuple[PgQueue, Any, Any]:
    """One deploy of the application: the same task names, the code of `version` ('old' has no
    patch, 'new' has `patched`, 'final' has `deprecate_patch`). The path each run took is
    recorded as the steps it ran."""
    app = PgQueue(dsn)

    @app.task(name="review", retry=Retry(max_attempts=1))
    async def review(doc: int) -> str:
        ctx = current_run()
        if version == "old":
            draft = await ctx.step("draft", lambda: f"draft {doc}")
        elif version == "new":
            if await ctx.patched("review-v2"):
                draft = await ctx.step("draft_v2", lambda: f"draft v2 {doc}")
            else:
                draft = await ctx.step("draft", lambda: f"draft {doc}")
        else:
            await ctx.deprecate_patch("review-v2")
            draft = await ctx.step("draft_v2", lambda: f"draft v2 {doc}")
        verdict = await ctx.wait_for_event("verdict", str(doc))
        return f"{draft}: {verdict['ok']}"

    @app.task(name="review_sync", retry=Retry(max_attempts=1))
    def review_sync(doc: int) -> str:
        ctx = current_run()
        prepared = "unprepared"
        if version != "old" and ctx.patched_sync("review-v2"):  # the new code prepares before the wait
            prepared = ctx.step_sync("prepare", lambda: "prepared")
        verdict = ctx.wait_for_event_sync("verdict", f"s{doc}", timeout=60, default={"ok": "timed out"})
        return ctx.step_sync("draft", lambda: f"draft {doc} {prepared}: {verdict['ok']}")

    return app, review, review_sync


def _steps(dsn: str, run_id: int) -> list[tuple[int, str]]:
    with psycopg.connect(dsn) as conn:
        return [(r[0], r[1]) for r in conn.execute(
            "SELECT seq, step_key FROM pgqueue.steps WHERE run_id = %s ORDER BY seq, step_key",
            (run_id,))]


def _started_on(dsn: str, version: str, doc: int, *, sync: bool = False) -> int:
    """A run started by the workers of deploy `version`, left where it suspends; its id."""
    app, review, review_sync = _apps(dsn, version)
    try:
        run = (review_sync if sync else review).enqueue(doc)
        drain(app).raise_failures()
        assert app.get_run(run.id).info().status == "waiting"
        return run.id
    finally:
        app.close()


def _send(app: PgQueue, key: str) -> None:
    app.send_event("verdict", key, {"ok": True})


def test_old_runs_keep_the_old_path_new_runs_take_the_new_one_across_a_deploy(dsn: str) -> None:
    before = _started_on(dsn, "old", 1)  # started by the old code: suspends in its event wait
    assert _steps(dsn, before) == [(0, "draft#0")]

    new_app, new_review, _ = _apps(dsn, "new")  # the deploy
    try:
        after = new_review.enqueue(2)
        drain(new_app).raise_failures()
        _send(new_app, "1")
        _send(new_app, "2")
        drain(new_app).raise_failures()
        assert new_app.get_run(before).result(timeout=5) == "draft 1: True"       # the old path, replayed
        assert new_app.get_run(after.id).result(timeout=5) == "draft v2 2: True"  # the new path
        # the new run's marker takes no place in the sequence: its steps keep their numbers
        assert _steps(dsn, after.id) == [(0, "draft_v2#0"), (0, "patched:review-v2"), (1, "event:verdict#0")]
        assert _steps(dsn, before) == [(0, "draft#0"), (1, "event:verdict#0")]
    finally:
        new_app.close()


def test_the_decision_is_recorded_and_survives_retries(dsn: str) -> None:
    """A run that took the new path keeps it on its next attempts (the marker), and a run that
    took the old path keeps that too (its own steps past the point), however often it is asked."""
    new_app, new_review, _ = _apps(dsn, "new")
    try:
        run = new_review.enqueue(3)
        drain(new_app).raise_failures()  # attempt 1: marker recorded, new path, then waits
        with psycopg.connect(dsn) as conn:
            marker = conn.execute("SELECT output FROM pgqueue.steps WHERE run_id = %s AND step_key = %s",
                                  (run.id, "patched:review-v2")).fetchone()
        assert marker == ({"patch": "review-v2"},)
        _send(new_app, "3")
        drain(new_app).raise_failures()  # attempt 2: replays with the marker
        assert new_app.get_run(run.id).result(timeout=5) == "draft v2 3: True"
        with psycopg.connect(dsn) as conn:
            attempts = conn.execute("SELECT attempt FROM pgqueue.runs WHERE id = %s", (run.id,)).fetchone()
        assert attempts == (2,)
    finally:
        new_app.close()


def test_a_run_waiting_at_the_patch_point_counts_as_having_passed_it(pgqueue_dsn: str,
                                                                     pgqueue_clock: Clock) -> None:
    """An old run of the sync task waits for its event right where the new code prepares first;
    its wait times out after the deploy. It had reached the point (its wait was registered, though
    no step records it), so it keeps the old path."""
    before = _started_on(pgqueue_dsn, "old", 4, sync=True)
    assert _steps(pgqueue_dsn, before) == []
    new_app, _, new_sync = _apps(pgqueue_dsn, "new")
    try:
        after = new_sync.enqueue(5)
        drain(new_app).raise_failures()
        pgqueue_clock.advance(61)  # both waits time out
        drain(new_app).raise_failures()
        assert new_app.get_run(before).result(timeout=5) == "draft 4 unprepared: timed out"
        assert new_app.get_run(after.id).result(timeout=5) == "draft 5 prepared: timed out"
        assert _steps(pgqueue_dsn, after.id) == [(0, "patched:review-v2"), (0, "prepare#0"),
                                                 (1, "event:verdict#0"), (2, "draft#0")]
    finally:
        new_app.close()


def test_deprecate_patch_fails_a_run_that_took_the_old_path_and_keeps_the_others(dsn: str) -> None:
    stale = _started_on(dsn, "old", 6)
    patched = _started_on(dsn, "new", 7)
    final_app, final_review, _ = _apps(dsn, "final")
    try:
        fresh = final_review.enqueue(8)
        drain(final_app).raise_failures()
        for key in ("6", "7", "8"):
            _send(final_app, key)
        drain(final_app)
        failed = final_app.get_run(stale).info()
        assert failed.status == "failed" and failed.error is not None
        assert failed.error["type"] == "NonDeterminismError"
        assert "started before patch 'review-v2'" in failed.error["message"]
        assert final_app.get_run(patched).result(timeout=5) == "draft v2 7: True"
        assert final_app.get_run(fresh.id).result(timeout=5) == "draft v2 8: True"
        # deprecate_patch records the marker too: a rollback to the `patched` code keeps it new
        assert (0, "patched:review-v2") in _steps(dsn, fresh.id)
    finally:
        final_app.close()


@pytest.mark.parametrize("bad", ["", "a" * 201, "has#hash", "1starts-with-digit", "sp ace"])
def test_bad_patch_ids_are_refused_clearly(dsn: str, bad: str) -> None:
    app = PgQueue(dsn)
    seen: list[BaseException] = []

    @app.task(name="bad_patch")
    async def bad_patch() -> None:
        try:
            await current_run().patched(bad)
        except ConfigurationError as exc:
            seen.append(exc)

    try:
        bad_patch.enqueue()
        drain(app).raise_failures()
    finally:
        app.close()
    assert len(seen) == 1 and "patch name" in str(seen[0])
