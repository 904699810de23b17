"""Cron schedules: tick arithmetic, misfire policies, DST, runtime management, exactly once per tick."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from conftest import ROOT, bind, running_worker, wait_for
from pgqueue import ConfigurationError, PgQueue
from pgqueue.cron import Schedule, check_expression, due_ticks, fire_due_op, next_tick, ticks_after

T0 = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def test_bad_expressions_and_zones_are_refused() -> None:
    for bad in ("61 * * * *", "* * *", "every day", "* * * * * * * *"):
        with pytest.raises(ConfigurationError, match="invalid cron expression"):
            check_expression(bad)
    with pytest.raises(ConfigurationError, match="unknown time zone 'Mars/Olympus'"):
        check_expression("0 3 * * *", "Mars/Olympus")
    with pytest.raises(ConfigurationError, match="misfire policy"):
        Schedule("x", "0 3 * * *", "t", misfire="sometimes")
    check_expression("*/10 * * * * *")


def test_a_bad_field_is_named_and_the_ambiguous_six_field_form_is_refused() -> None:
    # a 5-field expression with a bad value was told to "use 5 fields"
    with pytest.raises(ConfigurationError, match=r"'61 \* \* \* \*': the minute '61' is out of range"):
        check_expression("61 * * * *")
    with pytest.raises(ConfigurationError, match="the weekday 'FUNDAY'"):
        check_expression("0 3 * * FUNDAY")
    with pytest.raises(ConfigurationError, match="it has 3 fields"):
        check_expression("* * *")
    # croniter's seconds-last form: the last field would be read as a weekday here
    with pytest.raises(ConfigurationError, match=r"ambiguous .* For seconds '30' write '30 0 3 \* \* \*'"):
        check_expression("0 3 * * * 30")
    with pytest.raises(ConfigurationError, match="ambiguous"):
        check_expression("0 0 * * * 5")
    for fine in ("* * * * * *", "0 30 9 * * MON-FRI", "*/10 * * * * ?", "0 3 * * 5"):
        check_expression(fine)


def test_misfire_policies_after_a_downtime() -> None:
    missed_from = T0 - timedelta(minutes=5)  # the schedule was due 5 minutes ago, every minute
    now = T0 + timedelta(seconds=30)
    expected_next = T0 + timedelta(minutes=1)
    fire, following = due_ticks("* * * * *", "UTC", missed_from, now, "run_once", None)
    assert (fire, following) == ([T0], expected_next)
    fire, _ = due_ticks("* * * * *", "UTC", missed_from, now, "catch_up", 3)
    assert fire == [T0 - timedelta(minutes=3), T0 - timedelta(minutes=2), T0 - timedelta(minutes=1), T0]
    fire, _ = due_ticks("0 * * * *", "UTC", T0 - timedelta(hours=3), T0 + timedelta(minutes=5), "run_once", None)
    assert fire == [T0]  # all late: one run for the latest
    fire, _ = due_ticks("* * * * *", "UTC", missed_from, now, "catch_up", None)
    assert len(fire) == 6
    fire, following = due_ticks("0 * * * *", "UTC", T0 - timedelta(hours=3), now, "skip", None)
    assert fire == [T0] and following == T0 + timedelta(hours=1)  # only the on-time tick
    fire, _ = due_ticks("0 * * * *", "UTC", T0 - timedelta(hours=3), T0 + timedelta(minutes=5), "skip", None)
    assert fire == []  # every tick is late: all skipped


def test_time_zones_and_dst_edges() -> None:
    # 09:00 in Paris is 08:00 UTC in winter
    assert next_tick("0 9 * * *", "Europe/Paris", T0) == datetime(2026, 11, 27, 8, 0, tzinfo=UTC)
    # spring forward (29 March 2026): 02:30 does not exist in Paris; it fires at 03:00 local (01:00 UTC)
    spring = list(_take(ticks_after("30 2 * * *", "Europe/Paris", datetime(2026, 3, 28, 12, tzinfo=UTC)), 2))
    assert spring == [datetime(2026, 3, 29, 1, 0, tzinfo=UTC), datetime(2026, 3, 30, 0, 30, tzinfo=UTC)]
    # fall back (25 October 2026): 02:30 happens twice in Paris; it fires once, at the first
    fall = list(_take(ticks_after("30 2 * * *", "Europe/Paris", datetime(2026, 10, 24, 12, tzinfo=UTC)), 2))
    assert fall == [datetime(2026, 10, 25, 0, 30, tzinfo=UTC), datetime(2026, 10, 26, 1, 30, tzinfo=UTC)]


def _take(it: Any, n: int) -> Any:
    for _ in range(n):
        yield next(it)


def schedule_rows(dsn: str) -> dict[str, tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return {r[0]: r[1:] for r in conn.execute(
            "SELECT name, expression, enabled, source, next_fire_at FROM pgqueue.cron_schedules")}


async def test_worker_fires_every_tick_once_and_runtime_management(dsn: str) -> None:
    import cron_app

    bind(cron_app.app, dsn)
    async with running_worker(cron_app.app, poll_interval=0.2):
        await wait_for(lambda: _tick_count(dsn, "every-second", 3), timeout=20, what="three ticks")
        # pause: no more ticks; resume: ticks again
        proc = _cli(dsn, "cron", "pause", "every-second")
        assert proc.returncode == 0, proc.stderr
        paused_at = await asyncio.to_thread(_ticks, dsn, "every-second")
        await asyncio.sleep(2.5)
        assert await asyncio.to_thread(_ticks, dsn, "every-second") == paused_at
        assert _cli(dsn, "cron", "resume", "every-second").returncode == 0
        await wait_for(lambda: _tick_count(dsn, "every-second", len(paused_at) + 2), timeout=20,
                       what="ticks after resume")
        # trigger now
        triggered = _cli(dsn, "cron", "trigger", "every-second")
        assert triggered.returncode == 0 and "triggered: run" in triggered.stdout
        run_id = int(triggered.stdout.rsplit(" ", 1)[1])
        assert await cron_app.app.get_async_run(run_id).result(timeout=10) == "tick"
    ticks = _ticks(dsn, "every-second")
    with psycopg.connect(dsn) as conn:
        runs = conn.execute("SELECT count(*), count(DISTINCT idempotency_key) FROM pgqueue.runs"
                            " WHERE idempotency_key LIKE 'cron:every-second:%'").fetchone()
    assert runs == (len(ticks), len(ticks))  # one run per tick
    listed = json.loads(_cli(dsn, "cron", "list", "--json").stdout)
    assert listed[0]["name"] == "every-second" and listed[0]["source"] == "code"
    await cron_app.app.aclose()


async def _tick_count(dsn: str, name: str, at_least: int) -> bool:
    return len(await asyncio.to_thread(_ticks, dsn, name)) >= at_least


def _ticks(dsn: str, name: str) -> list[datetime]:
    with psycopg.connect(dsn) as conn:
        return [r[0] for r in conn.execute("SELECT tick_at FROM pgqueue.cron_ticks WHERE schedule = %s"
                                           " ORDER BY tick_at", (name,))]


def _cli(dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PGQUEUE_DSN": dsn, "PYTHONPATH": str(ROOT / "tests")}
    return subprocess.run([sys.executable, "-m", "pgqueue_cli", *args], env=env, capture_output=True, text=True,
                          timeout=60)


def test_runtime_edits_survive_code_sync_and_bad_input_stores_nothing(dsn: str) -> None:
    app = PgQueue(dsn)

    @app.task
    def nightly(limit: int = 10) -> int:
        return limit

    app.register_tasks()
    code = app.schedule(nightly, "0 3 * * *", name="nightly", input={"limit": 5})
    from pgqueue.cron import sync_op

    app.db.execute(sync_op([code]))
    assert schedule_rows(dsn)["nightly"][:3] == ("0 3 * * *", True, "code")
    # an edit at runtime wins over the code on the next sync
    assert _cli(dsn, "cron", "add", "nightly", "0 4 * * *", "nightly", "--input", '{"limit": 7}').returncode == 0
    app.db.execute(sync_op([code]))
    assert schedule_rows(dsn)["nightly"][:3] == ("0 4 * * *", True, "runtime")
    before = schedule_rows(dsn)
    for args, message in [
        (("cron", "add", "x", "61 * * * *", "nightly"), "invalid cron expression"),
        (("cron", "add", "x", "0 3 * * *", "nightly", "--timezone", "Mars/Olympus"), "unknown time zone"),
        (("cron", "add", "x", "0 3 * * *", "no_such_task"), "unknown task 'no_such_task'"),
        (("cron", "add", "x", "0 3 * * *", "nightly", "--input", "[1]"), "must be a JSON object"),
        (("cron", "pause", "ghost"), "no schedule named 'ghost'"),
    ]:
        result = _cli(dsn, *args)
        assert result.returncode == 1 and message in result.stderr and "Traceback" not in result.stderr, result
    assert schedule_rows(dsn) == before
    app.close()


def test_catch_up_fires_each_missed_tick_once(dsn: str) -> None:
    app = PgQueue(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("UPDATE pgqueue.cron_schedules SET enabled = false")  # other tests' schedules
        conn.execute("INSERT INTO pgqueue.tasks (name) VALUES ('report') ON CONFLICT DO NOTHING")  # as a worker does
        conn.execute("""INSERT INTO pgqueue.cron_schedules (name, expression, task, misfire_policy, catch_up_limit,
                                                            next_fire_at)
                        VALUES ('backfill', '* * * * *', 'report', 'catch_up', 4,
                                date_trunc('minute', now()) - interval '10 minutes')""")
    first = app.db.execute(fire_due_op(), transaction=True)
    again = app.db.execute(fire_due_op(), transaction=True)
    assert [f.schedule for f in first] == ["backfill"] * 5 and again == []  # 4 caught up + the current
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT count(*) FROM pgqueue.runs WHERE task = 'report'").fetchone() == (5,)
        nxt = conn.execute("SELECT next_fire_at > now() FROM pgqueue.cron_schedules WHERE name = 'backfill'"
                           ).fetchone()
    assert nxt == (True,)
    app.close()


def test_python_runtime_management(dsn: str) -> None:
    app = PgQueue(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO pgqueue.tasks (name) VALUES ('weekly_report') ON CONFLICT DO NOTHING")
    app.cron_add(Schedule("reports", "0 8 * * MON", "weekly_report", {"team": "data"}, "Europe/Paris"))
    [info] = [s for s in app.cron_list() if s.name == "reports"]
    assert (info.source, info.enabled, info.input) == ("runtime", True, {"team": "data"})
    app.cron_pause("reports")
    assert not next(s for s in app.cron_list() if s.name == "reports").enabled
    handle = app.cron_trigger("reports")
    assert handle.info().input == {"team": "data"} and "cron" in handle.info().tags
    app.cron_delete("reports")
    with pytest.raises(ConfigurationError, match="no schedule named 'reports'"):
        app.cron_resume("reports")
    app.close()


def test_a_tick_between_saving_a_schedule_and_the_first_pass_fires_once(dsn: str) -> None:
    app = PgQueue(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("UPDATE pgqueue.cron_schedules SET enabled = false")  # other tests' schedules
        conn.execute("INSERT INTO pgqueue.tasks (name) VALUES ('minutely') ON CONFLICT DO NOTHING")
    app.cron_add(Schedule("new-minutely", "* * * * *", "minutely"))
    with psycopg.connect(dsn, autocommit=True) as conn:
        # it was saved 10 s before the current minute began, and no worker looked since: the
        # minute's tick came in between
        [(tick,)] = conn.execute(
            "UPDATE pgqueue.cron_schedules SET updated_at = date_trunc('minute', now()) - interval '10 seconds'"
            " WHERE name = 'new-minutely' RETURNING date_trunc('minute', now())").fetchall()
    first = app.db.execute(fire_due_op(), transaction=True)
    again = app.db.execute(fire_due_op(), transaction=True)
    # (a second tick only if the next minute began between the two statements)
    ticks = [f.tick for f in first if f.schedule == "new-minutely"]
    assert ticks[:1] == [tick] and ticks == [tick + timedelta(minutes=i) for i in range(len(ticks))] and \
        len(ticks) <= 2, first
    assert [f for f in again if f.schedule == "new-minutely"] == []
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT count(*) FROM pgqueue.runs WHERE task = 'minutely'").fetchone() == (len(ticks),)
        assert conn.execute("SELECT next_fire_at = %s + interval '1 minute' FROM pgqueue.cron_schedules"
                            " WHERE name = 'new-minutely'", (ticks[-1],)).fetchone() == (True,)
    app.close()


def test_a_new_schedule_whose_first_tick_is_ahead_fires_nothing_yet(dsn: str) -> None:
    app = PgQueue(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("UPDATE pgqueue.cron_schedules SET enabled = false")
        conn.execute("INSERT INTO pgqueue.tasks (name) VALUES ('yearly') ON CONFLICT DO NOTHING")
    app.cron_add(Schedule("new-yearly", "0 0 1 1 *", "yearly"))
    assert app.db.execute(fire_due_op(), transaction=True) == []
    [info] = [s for s in app.cron_list() if s.name == "new-yearly"]
    assert info.next_fire_at is not None and info.next_fire_at.month == 1 and info.next_fire_at.day == 1
    app.close()
