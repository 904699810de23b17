"""The testing kit (pgqueue.testing) and its pytest plugin, on their own fixtures."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest

from pgqueue import Concurrency, ConfigurationError, PgQueue, Retry, RunStatus, current_run
from pgqueue.testing import (
    Clock,
    RunSuspended,
    TestServer,
    assert_enqueued,
    bound,
    call,
    call_async,
    drain,
    drain_async,
    enqueued,
)
from pgqueue.worker.claimer import claim_op

pytestmark = pytest.mark.timeout(180)

app = PgQueue()
calls: list[str] = []


@app.task(retry=Retry(max_attempts=3, initial_delay=600, jitter=0))
def flaky(times: int) -> int:
    calls.append("flaky")
    if calls.count("flaky") <= times:
        raise ConnectionError(f"down ({calls.count('flaky')})")
    return calls.count("flaky")


@app.task
def double(n: int) -> int:
    return 2 * n


@app.task
async def fan_out(n: int) -> list[int]:
    ctx = current_run()
    base = await ctx.step("base", lambda: 10)
    children = await ctx.spawn(double, [{"n": base + i} for i in range(n)])
    return [int(x) for x in await ctx.gather(children)]


@app.task
def approval(doc: int) -> str:
    ctx = current_run()
    ctx.step_sync("prepare", calls.append, f"prepare {doc}")
    answer = ctx.wait_for_event_sync("approved", str(doc), timeout=3600, default="nobody")
    return f"{doc} approved by {answer}"


@app.task(schedule_to_start=60)
def urgent() -> str:
    return "done"


@app.task(deadline=600)
async def nap_past_deadline() -> str:
    await current_run().sleep(3600)
    return "woke"


@app.task(concurrency=Concurrency(key="tenant", max_running=1))
def limited(tenant: str) -> str:
    return tenant


@app.task
def forever(n: int) -> None:
    forever.enqueue(n + 1)


flow = app.workflow("pipeline")


@flow.node()
def load(n: int) -> int:
    return n + 1


@flow.node(parents=[load])
def square(load: int) -> int:
    return load * load


app.schedule(double, "*/5 * * * *", name="every-five", input={"n": 21})


@pytest.fixture
def kit(pgqueue_dsn: str) -> Iterator[PgQueue]:
    calls.clear()
    with bound(app, pgqueue_dsn) as bound_app:
        yield bound_app


def test_drain_runs_children_and_workflows_through_the_worker(kit: PgQueue) -> None:
    parent = fan_out.enqueue(3)
    pipeline = flow.enqueue(n=4)
    drained = drain(kit).raise_failures()
    assert parent.result(timeout=5) == [20, 22, 24]
    assert pipeline.result(timeout=5) == 25  # its leaf's output
    assert len(drained.of("double")) == 3 and drained.of("fan_out")[0].status == RunStatus.SUCCEEDED
    assert drain(kit).runs == []  # nothing left: no worker started


def test_the_clock_moves_now_for_every_connection(kit: PgQueue, pgqueue_clock: Clock, pgqueue_dsn: str) -> None:
    before = pgqueue_clock.now()
    moved = pgqueue_clock.advance(hours=2)
    assert timedelta(hours=2) <= moved - before < timedelta(hours=2, seconds=30)
    with psycopg.connect(pgqueue_dsn) as conn:  # a new session, and the default of a column
        row = conn.execute("SELECT now(), pg_catalog.now()").fetchone()
        assert row is not None and row[0] - row[1] >= timedelta(hours=2)
    handle = double.enqueue(1)
    assert enqueued(kit, double)[0].created_at >= moved
    target = before + timedelta(days=3)
    assert abs(pgqueue_clock.travel_to(target) - target) < timedelta(seconds=1)
    drain(kit)
    assert handle.result(timeout=5) == 2
    pgqueue_clock.reset()
    assert pgqueue_clock.now() - before < timedelta(minutes=1)
    back = double.enqueue(2)  # back in real time: a run made now is due now
    drain(kit)
    assert back.result(timeout=5) == 4


def test_the_clock_refuses_a_database_without_it(dsn: str) -> None:
    with pytest.raises(ConfigurationError, match="no test clock"):
        Clock(dsn).advance(seconds=1)


def test_retries_wait_their_backoff_until_the_clock_moves(kit: PgQueue, pgqueue_clock: Clock) -> None:
    handle = flaky.enqueue(2)
    drained = drain(kit)
    assert [r.status for r in drained.runs] == [RunStatus.QUEUED]  # its retry is due in 600 s
    assert calls == ["flaky"]
    pgqueue_clock.advance(minutes=10, seconds=1)
    drain(kit)
    assert calls == ["flaky"] * 2
    drain(kit, skip_delays=True)  # the clock jumps to each wake-up
    assert handle.result() == 3


def test_cron_ticks_fire_when_the_clock_passes_them(kit: PgQueue, pgqueue_clock: Clock) -> None:
    assert drain(kit).cron_runs == 0  # the schedule is registered; its first tick is ahead
    now = pgqueue_clock.now()
    pgqueue_clock.travel_to(now.replace(second=0, microsecond=0) + timedelta(minutes=5 - now.minute % 5, seconds=1))
    drained = drain(kit)
    assert drained.cron_runs == 1
    [tick] = drained.of("double")
    assert tick.result == 42 and "cron" in tick.tags
    assert drain(kit).cron_runs == 0  # each tick once


def test_schedule_to_start_and_deadlines_follow_the_clock(kit: PgQueue, pgqueue_clock: Clock) -> None:
    napping = nap_past_deadline.enqueue()
    drain(kit)
    assert napping.status() == "sleeping"
    late = urgent.enqueue()  # nothing runs it within its 60 s
    pgqueue_clock.advance(minutes=11)
    drain(kit)
    assert (late.status(), enqueued(kit, urgent)[0].error["type"]) == ("failed", "Expired")  # type: ignore[index]
    assert enqueued(kit, nap_past_deadline)[0].error["type"] == "DeadlineExceeded"  # type: ignore[index]


def test_a_drain_that_never_ends_times_out_clearly(kit: PgQueue) -> None:
    forever.enqueue(0)
    with pytest.raises(TimeoutError, match="drain still busy after 2s"):
        drain(kit, timeout=2)


def test_raise_failures_names_the_failed_runs(kit: PgQueue) -> None:
    handle = flaky.enqueue(5)
    drained = drain(kit, skip_delays=True)  # three attempts, each after its backoff
    assert calls == ["flaky"] * 3
    with pytest.raises(AssertionError, match=rf"run {handle.id} \(flaky\): ConnectionError: down \(3\)"):
        drained.raise_failures()


def test_call_gives_the_value_or_the_task_s_own_exception(kit: PgQueue) -> None:
    assert call(kit, double, 21) == 42
    assert [r.status for r in enqueued(kit, double)] == [RunStatus.SUCCEEDED]  # recorded as a worker would
    with pytest.raises(ConnectionError, match=r"down \(1\)"):
        call(kit, flaky, 1)
    [retried] = enqueued(kit, flaky)
    assert (retried.status, retried.queue) == (RunStatus.QUEUED, "default")  # retried per its policy


def test_call_suspends_then_a_drain_continues(kit: PgQueue) -> None:
    with pytest.raises(RunSuspended) as suspended:
        call(kit, approval, 7)
    assert suspended.value.status == "waiting" and calls == ["prepare 7"]
    kit.send_event("approved", "7", "ann")
    drain(kit)
    assert kit.get_run(suspended.value.run_id).result() == "7 approved by ann"
    assert calls == ["prepare 7"]  # the step was not run again


async def test_async_twins_in_an_async_test(kit: PgQueue, pgqueue_clock: Clock) -> None:
    assert await call_async(kit, fan_out, 0) == []
    handle = await approval.enqueue_async(8)
    await drain_async(kit)
    await pgqueue_clock.advance_async(hours=1, seconds=1)  # the wait times out
    await drain_async(kit)
    assert await kit.get_async_run(handle.id).result() == "8 approved by nobody"
    with pytest.raises(RuntimeError, match="use the _async twin"):
        drain(kit)  # a sync drain inside a running loop
    # the app's async pool stays open: `bound` closes it on this (idle) loop after the test


def test_assert_enqueued_says_what_was_enqueued(kit: PgQueue) -> None:
    double.enqueue(1)
    double.enqueue(2)
    assert [r.input for r in assert_enqueued(kit, double, n=2)] == [{"n": 2}]
    assert_enqueued(kit, "double", count=2)
    with pytest.raises(AssertionError, match=r"(?s)expected a run of double with input \{'n': 3\}.*\{'n': 1\}"):
        assert_enqueued(kit, double, n=3)


def test_call_refuses_a_task_of_another_app(kit: PgQueue) -> None:
    with pytest.raises(ConfigurationError, match="not a task of this app"):
        call(PgQueue(kit.dsn), double, 1)


def test_the_plugin_in_a_user_s_project(tmp_path: Path, pgqueue_server: TestServer) -> None:
    """A project of its own: the fixtures come from the entry point, the app from the ini option."""
    (tmp_path / "myapp.py").write_text(textwrap.dedent("""
        from pgqueue import PgQueue
        app = PgQueue()

        @app.task
        def hello(name: str) -> str:
            return f"hello {name}"
    """))
    (tmp_path / "pyproject.toml").write_text('[tool.pytest.ini_options]\npgqueue_app = "myapp:app"\n')
    (tmp_path / "test_mine.py").write_text(textwrap.dedent("""
        from myapp import hello
        from pgqueue.testing import drain

        def test_hello(pgqueue_app, pgqueue_dsn):
            assert pgqueue_app.dsn == pgqueue_dsn
            handle = hello.enqueue("you")
            drain(pgqueue_app)
            assert handle.result() == "hello you"

        def test_each_test_has_its_own_database(pgqueue_app):
            assert hello.enqueue("x").id == 1  # the other test's run is not in this database
    """))
    env = {k: v for k, v in os.environ.items() if k not in ("PGQUEUE_DSN", "DATABASE_URL")}
    env["PGQUEUE_TEST_DSN"] = pgqueue_server.admin_dsn
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *_own_basetemp(tmp_path),
                             str(tmp_path)],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=150)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout


def test_the_fixture_without_the_ini_option_says_what_to_do(tmp_path: Path, pgqueue_server: TestServer) -> None:
    (tmp_path / "test_bare.py").write_text("def test_it(pgqueue_app):\n    pass\n")
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    env = {**os.environ, "PGQUEUE_TEST_DSN": pgqueue_server.admin_dsn}
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *_own_basetemp(tmp_path),
                             str(tmp_path)],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=150)
    assert result.returncode == 1
    assert "needs the ini option pgqueue_app = 'module:app'" in result.stdout


def test_call_of_a_run_that_cannot_start_says_why_and_leaves_nothing_queued(kit: PgQueue) -> None:
    first = limited.enqueue("acme")
    [held] = kit.db.execute(claim_op(str(uuid.uuid4()), ["default"], 1, 60))  # a worker runs it: the key is full
    assert held.id == first.id
    with pytest.raises(ConfigurationError, match="concurrency key is full"):
        call(kit, limited, "acme")
    assert [r.status for r in enqueued(kit, limited)] == [RunStatus.RUNNING, RunStatus.CANCELLED]
    assert call(kit, limited, "other") == "other"


def test_bound_points_the_app_back_where_it_was(pgqueue_dsn: str) -> None:
    other = PgQueue("postgresql://nobody@db.invalid/elsewhere")

    @other.task
    def ping() -> str:
        return "pong"

    with bound(other, pgqueue_dsn) as inside:
        assert inside.dsn == pgqueue_dsn
        assert call(inside, ping) == "pong"
    assert other.dsn == "postgresql://nobody@db.invalid/elsewhere"


def _own_basetemp(tmp_path: Path) -> list[str]:
    """A pytest started by a test gets a temp folder of its own: with pytest's default one, it
    would rotate the numbered folders of /tmp/pytest-of-<user> and delete the running suite's
    (the embedded server's data folder with it)."""
    return [f"--basetemp={tmp_path.parent / (tmp_path.name + '-inner')}"]
