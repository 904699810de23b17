"""CLI views: aligned and coloured tables, the live status view, waiting for a run, --json everywhere."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

from conftest import running_worker
from pgqueue_cli.main import main

pytestmark = pytest.mark.timeout(120)

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def cli(*args: str, dsn: str, color: bool = False) -> Any:
    return CliRunner().invoke(main, [*args, "--dsn", dsn], color=color, catch_exceptions=False)


def pgqueue(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The real command in a process of its own (its terminal checks see a pipe, as in a script)."""
    return subprocess.run([sys.executable, "-m", "pgqueue_cli", *args], env=env, capture_output=True, text=True,
                          timeout=90)


@pytest.fixture
def runs(conn: psycopg.Connection[Any]) -> list[int]:
    """Runs in each of a few statuses, alone in queue 'views'."""
    conn.execute("DELETE FROM pgqueue.ready WHERE queue = 'views'")
    conn.execute("DELETE FROM pgqueue.attempts WHERE run_id IN (SELECT id FROM pgqueue.runs WHERE queue = 'views')")
    conn.execute("DELETE FROM pgqueue.runs WHERE queue = 'views'")
    ids = [row[0] for row in conn.execute(
        "SELECT pgqueue.enqueue('views_task', jsonb_build_object('n', n), queue => 'views')"
        " FROM generate_series(1, 4) n")]
    conn.execute("UPDATE pgqueue.runs SET status = 'failed', finished_at = now(),"
                 " error = '{\"type\": \"Boom\", \"message\": \"it broke\"}' WHERE id = %s", (ids[0],))
    conn.execute("UPDATE pgqueue.runs SET status = 'succeeded', finished_at = now(), result = '12' WHERE id = %s",
                 (ids[1],))
    conn.execute("DELETE FROM pgqueue.ready WHERE run_id = ANY(%s)", (ids[:2],))
    return ids


def test_tables_are_aligned_and_coloured_only_on_a_terminal(runs: list[int], dsn: str) -> None:
    plain = cli("runs", "list", "--queue", "views", dsn=dsn)
    assert plain.exit_code == 0 and not ANSI.search(plain.output)
    header, *rows = plain.output.splitlines()
    assert len(rows) == 4
    column = header.index("STATUS")
    assert sorted(row[column:].split()[0] for row in rows) == ["failed", "queued", "queued", "succeeded"]
    assert all(row.index(str(run_id)) + len(str(run_id)) == len("ID".rjust(len(str(max(runs)))))
               for row, run_id in zip(rows, sorted(runs, reverse=True), strict=True))  # ids right-aligned
    coloured = cli("runs", "list", "--queue", "views", dsn=dsn, color=True)
    assert "\x1b[31m\x1b[1mfailed\x1b[0m" in coloured.output and "\x1b[32msucceeded\x1b[0m" in coloured.output
    assert ANSI.sub("", coloured.output) == plain.output  # colour never shifts a column


def test_run_show_lists_fields_and_attempts(runs: list[int], dsn: str, conn: psycopg.Connection[Any]) -> None:
    conn.execute("INSERT INTO pgqueue.attempts (run_id, attempt, started_at, finished_at, outcome, error_type,"
                 " error_message, traceback, logs) VALUES (%s, 1, now() - interval '2 s', now(), 'failed', 'Boom',"
                 " 'it broke', 'Traceback: line 1', 'INFO starting')", (runs[0],))
    shown = cli("runs", "show", str(runs[0]), dsn=dsn)
    assert shown.exit_code == 0, shown.output
    lines = shown.output.splitlines()
    assert lines[0] == f"run {runs[0]}  views_task  failed"
    assert "  error     Boom: it broke" in lines and '  input     {"n": 1}' in lines
    assert any(re.match(r"\s*1\s+failed\s+2\.0\d\ds\s", line) for line in lines), shown.output
    assert "attempt 1 traceback:" in lines and "    Traceback: line 1" in lines and "    INFO starting" in lines


def test_status_watch_redraws_until_interrupted(runs: list[int], dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    watched = cli("status", "--watch", "--interval", "0.1", "--iterations", "2", dsn=dsn)
    assert watched.exit_code == 0, watched.output
    assert watched.output.count("pgqueue status") == 2 and "(Ctrl-C to quit)" in watched.output
    [row] = [line for line in watched.output.splitlines() if line.startswith("views ")][:1]
    assert row.split()[:4] == ["views", "2", "0", "0"]  # queue, queued, scheduled, running

    def interrupt(seconds: float) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("pgqueue_cli.status_cmd.time.sleep", interrupt)
    top = cli("top", dsn=dsn)
    assert top.exit_code == 0 and top.output.count("pgqueue status") == 1  # Ctrl-C is a normal exit

    lines = cli("status", "--watch", "--json", "--iterations", "3", "--interval", "0.1", dsn=dsn).output.splitlines()
    snapshots = [json.loads(line) for line in lines if line]
    assert len(snapshots) == 1  # the patched sleep interrupted after the first refresh
    assert {q["queue"]: q["queued"] for q in snapshots[0]["queues"]}["views"] == 2


def test_every_listing_has_json(runs: list[int], dsn: str) -> None:
    for args in (["runs", "list"], ["runs", "list", "--scheduled"], ["runs", "show", str(runs[1])], ["status"],
                 ["cron", "list"], ["limits", "list"], ["runs", "wait", str(runs[1])]):
        result = cli(*args, "--json", dsn=dsn)
        assert result.exit_code == 0, (args, result.output)
        json.loads(result.output)
    assert json.loads(cli("runs", "wait", str(runs[1]), "--json", dsn=dsn).output)["result"] == 12


async def test_runs_wait_shows_children_done_and_the_outcome(durable_tasks: Any, cli_env: dict[str, str]) -> None:
    handle = await durable_tasks.fan_out.enqueue_async(200, 50)
    never = await durable_tasks.nap.options(queue="nobody").enqueue_async(1)
    async with running_worker(durable_tasks.app, concurrency=8, poll_interval=0.05):
        waited = await asyncio.to_thread(pgqueue, "runs", "wait", str(handle.id), "--timeout", "60", env=cli_env)
        assert waited.returncode == 0, waited.stderr
        assert waited.stdout.strip() == f"run {handle.id} succeeded: {2 * sum(range(200))}"
        counts = [tuple(map(int, m)) for m in re.findall(r"(\d+)/(\d+) children done", waited.stderr)]
        assert counts and counts[-1] == (200, 200) and counts == sorted(counts)

        @durable_tasks.app.task(name="doomed_fan_out")
        async def doomed_fan_out() -> list[int]:
            ctx = durable_tasks.current_run()
            return await ctx.gather(await ctx.spawn(durable_tasks.embed_chunk, [{"i": 1}, {"i": -1}]))

        failed = await doomed_fan_out.enqueue_async()
        result = await asyncio.to_thread(pgqueue, "runs", "wait", str(failed.id), env=cli_env)
        del durable_tasks.app.tasks["doomed_fan_out"]
    assert result.returncode == 1 and "2/2 children done" in result.stderr
    assert f"Error: run {failed.id} failed: ChildRunFailed: 1 of 2 child runs" in result.stderr
    late = await asyncio.to_thread(pgqueue, "runs", "wait", str(never.id), "--timeout", "0.3", env=cli_env)
    assert late.returncode == 1 and f"run {never.id} had not finished after 0.3s" in late.stderr
