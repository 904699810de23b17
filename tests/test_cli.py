"""The `pgqueue` command, driven as a subprocess like a user would."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest


def pgqueue(*args: str, env: dict[str, str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pgqueue_cli", *args], env=env, input=stdin,
                          capture_output=True, text=True, timeout=120)


def assert_one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture(autouse=True)
def registered(conn: psycopg.Connection[Any]) -> None:
    """The tasks these tests enqueue by name, registered as a worker would (an unknown one is refused)."""
    conn.execute("INSERT INTO pgqueue.tasks (name) VALUES ('summarize'), ('embed_docs'), ('report'), ('t') "
                 "ON CONFLICT DO NOTHING")


def test_migrate_check_then_migrate(empty_dsn: str, cli_env: dict[str, str]) -> None:
    env = {**cli_env, "PGQUEUE_DSN": empty_dsn}
    behind = pgqueue("migrate", "--check", env=env)
    assert behind.returncode == 1 and "pending migration" in behind.stdout
    applied = pgqueue("migrate", env=env)
    assert applied.returncode == 0 and "applied" in applied.stdout
    assert pgqueue("migrate", "--check", env=env).returncode == 0
    assert "up to date" in pgqueue("migrate", env=env).stdout


def test_enqueue_and_show(cli_env: dict[str, str], conn: psycopg.Connection[Any]) -> None:
    result = pgqueue("enqueue", "summarize", "--input", '{"doc_id": 5}', "--priority", "3",
                     "--tag", "cli", env=cli_env)
    assert result.returncode == 0, result.stderr
    run_id = int(result.stdout)
    shown = json.loads(pgqueue("runs", "show", str(run_id), "--json", env=cli_env).stdout)
    assert (shown["task"], shown["input"], shown["priority"], shown["tags"]) == ("summarize", {"doc_id": 5}, 3, ["cli"])
    again = pgqueue("enqueue", "summarize", "--idempotency-key", "k", env=cli_env)
    same = pgqueue("enqueue", "summarize", "--idempotency-key", "k", env=cli_env)
    assert same.stdout.startswith(again.stdout.strip()) and "existing run" in same.stdout


def test_enqueue_validates_against_the_app(cli_env: dict[str, str]) -> None:
    bad = pgqueue("enqueue", "summarize", "--app", "sample_app:app", "--input", '{"doc_id": "x"}', env=cli_env)
    assert_one_line_error(bad, "doc_id", "valid integer")
    good = pgqueue("enqueue", "summarize", "--app", "sample_app:app", "--input", '{"doc_id": 9}', env=cli_env)
    assert good.returncode == 0, good.stderr


def test_bulk_enqueue_from_json_lines(cli_env: dict[str, str], tmp_path: Path,
                                      conn: psycopg.Connection[Any]) -> None:
    lines = tmp_path / "docs.jsonl"
    lines.write_text("".join(json.dumps({"doc_id": i}) + "\n" for i in range(2500)))
    result = pgqueue("enqueue-many", "embed_docs", str(lines), "--queue", "bulk", env=cli_env)
    assert result.returncode == 0, result.stderr
    assert "enqueued 2500 runs" in result.stdout
    assert conn.execute("SELECT count(*) FROM pgqueue.runs WHERE task = 'embed_docs' AND queue = 'bulk'"
                        ).fetchone() == (2500,)
    piped = pgqueue("enqueue-many", "embed_docs", "-", env=cli_env, stdin='{"doc_id": 1}\n\n{"doc_id": 2}\n')
    assert "enqueued 2 runs" in piped.stdout


def test_bad_inputs_give_one_line_errors(cli_env: dict[str, str], tmp_path: Path,
                                         conn: psycopg.Connection[Any]) -> None:
    (before,) = conn.execute("SELECT count(*) FROM pgqueue.runs").fetchone()  # type: ignore[misc]
    assert_one_line_error(pgqueue("enqueue", "t", "--input", "{not json", env=cli_env), "--input is not valid JSON")
    assert_one_line_error(pgqueue("enqueue", "t", "--input", "[1]", env=cli_env), "must be a JSON object")
    big = tmp_path / "big.json"
    big.write_text(json.dumps({"text": "x" * 1_100_000}))
    assert_one_line_error(pgqueue("enqueue", "t", "--input", f"@{big}", env=cli_env), "over the limit of 1048576")
    bad_file = tmp_path / "bad.jsonl"
    bad_file.write_text('{"a": 1}\n{"a": 2\n')
    assert_one_line_error(pgqueue("enqueue-many", "t", str(bad_file), env=cli_env), "line 2 of")
    assert_one_line_error(pgqueue("enqueue", "t", "--app", "no_such_module:app", env=cli_env),
                          "module 'no_such_module' not found")
    assert_one_line_error(pgqueue("enqueue", "t", "--app", "sample_app:add", env=cli_env), "not a PgQueue app")
    assert conn.execute("SELECT count(*) FROM pgqueue.runs").fetchone() == (before,)


def test_connection_problems_give_one_line_errors(cli_env: dict[str, str]) -> None:
    env = {k: v for k, v in cli_env.items() if k != "PGQUEUE_DSN"}
    assert_one_line_error(pgqueue("migrate", env=env), "no database configured", "PGQUEUE_DSN")
    assert_one_line_error(pgqueue("migrate", "--dsn", "postgresql://nobody@127.0.0.1:1/x", env=env),
                          "cannot connect to PostgreSQL at 127.0.0.1:1/x")
    assert_one_line_error(pgqueue("migrate", env={**env, "DATABASE_URL": "host=127.0.0.1 port=notaport x"}),
                          "DSN is not valid")
    wrong_db = cli_env["PGQUEUE_DSN"].rsplit("/", 1)[0] + "/no_such_database"
    if "dbname=" in cli_env["PGQUEUE_DSN"]:
        wrong_db = cli_env["PGQUEUE_DSN"].replace("dbname=", "dbname=no_such_")
    assert_one_line_error(pgqueue("enqueue", "t", env={**env, "PGQUEUE_DSN": wrong_db}), "does not exist")


def test_missing_schema_says_to_migrate(empty_dsn: str, cli_env: dict[str, str]) -> None:
    assert_one_line_error(pgqueue("enqueue", "t", env={**cli_env, "PGQUEUE_DSN": empty_dsn}),
                          "run `pgqueue migrate`")


def test_one_off_scheduled_runs_list_reschedule_cancel(cli_env: dict[str, str], conn: psycopg.Connection[Any]) -> None:
    run_id = int(pgqueue("enqueue", "report", "--delay", "3600", env=cli_env).stdout)
    listed = json.loads(pgqueue("runs", "list", "--scheduled", "--json", env=cli_env).stdout)
    assert run_id in [r["id"] for r in listed]
    moved = pgqueue("runs", "reschedule", str(run_id), "--at", "2031-01-01T09:00:00+00:00", env=cli_env)
    assert moved.returncode == 0, moved.stderr
    row = conn.execute("SELECT r.run_at, q.run_at FROM pgqueue.runs r JOIN pgqueue.ready q ON q.run_id = r.id"
                       " WHERE r.id = %s", (run_id,)).fetchone()
    assert row is not None and row[0] == row[1] and row[0].year == 2031
    naive = pgqueue("runs", "reschedule", str(run_id), "--at", "2031-01-01T09:00", env=cli_env)
    assert naive.returncode == 2 and "give a time zone" in naive.stderr and "Traceback" not in naive.stderr
    assert "cancelled" in pgqueue("runs", "cancel", str(run_id), env=cli_env).stdout
    assert_one_line_error(pgqueue("runs", "reschedule", str(run_id), "--delay", "5", env=cli_env),
                          "only queued runs can be rescheduled")


def test_a_pool_finalized_on_its_own_thread_prints_nothing() -> None:
    """The report Python prints when the collector runs ConnectionPool.__del__ on one of the
    pool's own threads (its join then raises) is dropped; any other unraisable exception is still
    reported. Real unraisable exceptions, raised by finalizers in a fresh interpreter."""
    script = """if True:
        import sys
        from pgqueue_cli.common import quiet_pool_finalizer
        sys.unraisablehook = quiet_pool_finalizer

        class ConnectionPool:  # as psycopg_pool's, whose __del__ joins the pool's threads
            def __del__(self):
                raise RuntimeError("cannot join current thread")

        class Other:
            def __del__(self):
                raise RuntimeError("cannot join current thread (elsewhere)")

        ConnectionPool()
        Other()
        print("done")
    """
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.stdout == "done\n", result
    assert "ConnectionPool" not in result.stderr and "(elsewhere)" in result.stderr, result.stderr
