"""Rough edges a new user hits in the first hour: warnings, refusals and messages that say what to do."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest

from conftest import ROOT, bind, running_worker
from pgqueue import InvalidInput, PgQueue, RunFailed, Schedule, UnknownTask
from pgqueue.cron import fire_due_op


@pytest.fixture
def sample(dsn: str) -> Any:
    import sample_app

    bind(sample_app.app, dsn)
    yield sample_app
    bind(sample_app.app, None)


async def test_a_worker_names_the_tasks_whose_queue_it_does_not_serve(
        sample: Any, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="pgqueue.worker"):
        async with running_worker(sample.app, queues=["default"]):
            pass
    [warning] = [r.getMessage() for r in caplog.records if "never runs these tasks" in r.getMessage()]
    assert "summarize (queue llm)" in warning  # sample_app declares summarize on queue "llm"
    assert "add (" not in warning              # add is on "default", which this worker serves
    caplog.clear()
    with caplog.at_level("WARNING", logger="pgqueue.worker"):
        async with running_worker(sample.app, queues=["default", "llm"]):
            pass
    assert not [r for r in caplog.records if "never runs these tasks" in r.getMessage()]


@pytest.mark.slow
def test_the_demo_ends_by_saying_how_to_use_the_command_and_stop_the_server(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("PGQUEUE_DSN", "DATABASE_URL")}
    env["PGQUEUE_DATA_DIR"] = str(tmp_path / "pg")
    try:
        demo = subprocess.run(["bash", str(ROOT / "scripts" / "demo.sh")], env=env, capture_output=True,
                              text=True, timeout=600)
        assert demo.returncode == 0, demo.stderr[-2000:]
        assert "summary of article 1" in demo.stdout
        assert "source .venv/bin/activate" in demo.stdout and "pgqueue status" in demo.stdout
        assert "stop it with: .venv/bin/pgqueue dev --stop" in demo.stdout
    finally:
        stopped = subprocess.run([str(ROOT / ".venv" / "bin" / "pgqueue"), "dev", "--stop"], env=env,
                                 capture_output=True, text=True, timeout=120)
    assert stopped.stdout.endswith("stopped\n"), stopped


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pgqueue_cli", *args], env=env, capture_output=True, text=True,
                          timeout=120)


async def test_runs_show_lists_the_steps_and_names_the_worker_as_status_does(
        durable_tasks: Any, cli_env: dict[str, str]) -> None:
    handle = await durable_tasks.loops.enqueue_async(3)
    async with running_worker(durable_tasks.app, name="worker-on-the-left"):
        await handle.result(timeout=30)
    shown = await asyncio.to_thread(cli, "runs", "show", str(handle.id), env=cli_env)
    assert shown.returncode == 0, shown.stderr
    assert "square#0" in shown.stdout and "square#2" in shown.stdout  # the steps, as the dashboard has them
    assert "worker-on-the-left" in shown.stdout  # the name `pgqueue status` and the worker's log show
    as_json = json.loads((await asyncio.to_thread(cli, "runs", "show", str(handle.id), "--json", env=cli_env)).stdout)
    assert [s["step_key"] for s in as_json["steps"]] == ["square#0", "square#1", "square#2"]
    assert as_json["attempts"][0]["worker_name"] == "worker-on-the-left"


def test_sql_refuses_an_unknown_task_unless_the_enqueue_names_its_queue(
        sample: Any, conn: psycopg.Connection[Any]) -> None:
    with pytest.raises(psycopg.Error, match='unknown task "sumarize"') as refused:
        conn.execute("SELECT pgqueue.enqueue('sumarize', '{\"doc_id\": 1}')")
    assert refused.value.diag.sqlstate == "PQ005" and "queue =>" in str(refused.value.diag.message_hint)
    with pytest.raises(psycopg.Error, match="unknown task"):
        conn.execute("SELECT * FROM pgqueue.enqueue_many('sumarize', ARRAY['{}']::jsonb[])")
    # the opt-out for a task whose workers have not started yet: name its queue
    (early,) = conn.execute("SELECT pgqueue.enqueue('not_yet', '{}', queue => 'llm')").fetchone()  # type: ignore[misc]
    sample.app.register_tasks()  # what a worker does at start
    (late,) = conn.execute("SELECT pgqueue.enqueue('summarize', '{\"doc_id\": 1}')").fetchone()  # type: ignore[misc]
    queues = dict(conn.execute("SELECT id, queue FROM pgqueue.runs WHERE id IN (%s, %s)", (early, late)).fetchall())
    assert queues == {early: "llm", late: "llm"}  # the named queue, else the registered one: never 'default'


def test_python_and_the_cli_refuse_an_unknown_task_before_writing(
        sample: Any, dsn: str, cli_env: dict[str, str], conn: psycopg.Connection[Any]) -> None:
    (before,) = conn.execute("SELECT count(*) FROM pgqueue.runs").fetchone()  # type: ignore[misc]
    with pytest.raises(UnknownTask, match=r"unknown task \"sumarize\".*this app declares 'summarize'"):
        sample.app.enqueue("sumarize", {"doc_id": 1})
    with PgQueue(dsn) as producer, pytest.raises(UnknownTask, match="no worker has registered it"):
        producer.enqueue_many("sumarize", [{"doc_id": 1}])
    refused = cli("enqueue", "sumarize", "--input", '{"doc_id": 1}', env=cli_env)
    assert refused.returncode == 1 and refused.stderr.startswith('Error: unknown task "sumarize"'), refused.stderr
    assert conn.execute("SELECT count(*) FROM pgqueue.runs").fetchone() == (before,)
    # naming the queue enqueues it; the CLI says the input went unchecked
    named = cli("enqueue", "sumarize", "--queue", "llm", env=cli_env)
    assert named.returncode == 0 and "not checked against sumarize's model" in named.stderr
    checked = cli("enqueue", "summarize", "--input", '{"doc_id": 1}', env={**cli_env, "PGQUEUE_APP": "sample_app:app"})
    assert checked.returncode == 0 and "not checked" not in checked.stderr


def test_enqueue_many_names_the_bad_line_the_same_way_for_every_error(
        sample: Any, cli_env: dict[str, str], tmp_path: Path) -> None:
    not_an_object = tmp_path / "a.jsonl"
    not_an_object.write_text('{"doc_id": 1}\n\n[2]\n')
    invalid = tmp_path / "b.jsonl"
    invalid.write_text('{"doc_id": 1}\n\n{"doc_id": "two"}\n')
    app_env = {**cli_env, "PGQUEUE_APP": "sample_app:app"}
    first = cli("enqueue-many", "summarize", str(not_an_object), env=app_env)
    second = cli("enqueue-many", "summarize", str(invalid), env=app_env)
    assert f"line 3 of {not_an_object}" in first.stderr, first.stderr
    assert f"line 3 of {invalid}" in second.stderr and "(item" not in second.stderr, second.stderr
    piped = subprocess.run([sys.executable, "-m", "pgqueue_cli", "enqueue-many", "summarize", "-"], env=app_env,
                           input='{"doc_id": "x"}\n', capture_output=True, text=True, timeout=120)
    assert "line 1 of stdin" in piped.stderr, piped.stderr


def test_cron_add_refuses_an_input_that_would_fail_every_tick(sample: Any) -> None:
    with pytest.raises(InvalidInput, match=r"schedule 'nightly'.*doc_id"):
        sample.app.cron_add(Schedule("nightly", "0 3 * * *", "summarize", {"doc_id": "not a number"}))
    assert "nightly" not in {s.name for s in sample.app.cron_list()}


def test_a_schedule_written_by_sql_for_an_unknown_task_is_disabled_not_fired(
        sample: Any, conn: psycopg.Connection[Any]) -> None:
    conn.execute("""INSERT INTO pgqueue.cron_schedules (name, expression, task, input, updated_at)
                    VALUES ('orphan', '* * * * *', 'nobody_declares_this', '{}', now() - interval '2 minutes')""")
    fired = sample.app.db.execute(fire_due_op(), transaction=True)
    assert [(f.schedule, f.run_id) for f in fired if f.schedule == "orphan"] == [("orphan", None)]
    assert "not registered by any worker" in next(f.problem for f in fired if f.schedule == "orphan")
    assert conn.execute("SELECT enabled FROM pgqueue.cron_schedules WHERE name = 'orphan'").fetchone() == (False,)


async def test_a_stored_traceback_starts_at_the_task_not_in_the_worker(worker_tasks: Any, dsn: str) -> None:
    handle = await worker_tasks.refuses.enqueue_async("this")
    async with running_worker(worker_tasks.app):
        with pytest.raises(RunFailed):
            await handle.result(timeout=20)
    with psycopg.connect(dsn) as conn:
        [(traceback,)] = conn.execute("SELECT traceback FROM pgqueue.attempts WHERE run_id = %s", (handle.id,))
    frames = [line for line in traceback.splitlines() if line.startswith('  File "')]
    assert frames and frames[0].endswith("in refuses"), traceback  # no frame of pgqueue's machinery first
    assert traceback.rstrip().endswith("ValueError: cannot handle 'this'")
