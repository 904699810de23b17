"""Hostile input: values nested too deeply, refused at enqueue and failing alone when stored
around the functions; limits a producer cannot lift; names checked by the database."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from conftest import bind, running_worker, wait_for
from pgqueue import PgQueue, Retry, current_run
from pgqueue.codec import MAX_JSON_DEPTH, UndecodableJSON, check_name, json_depth, load_stored_json, loads_bounded
from pgqueue.config import check_dsn_syntax, connect, mask_password, normalize_dsn
from pgqueue.cron import Schedule
from pgqueue.errors import ConfigurationError, InputTooLarge, InvalidInput
from pgqueue.ops import translate

DEEP = '{"a":' * 5000 + "1" + "}" * 5000
DEEP_SQL = """(repeat('{"a":', 5000) || '1' || repeat('}', 5000))::jsonb"""
DEEP_SMALL_SQL = """(repeat('{"a":', 200) || '1' || repeat('}', 200))::jsonb"""  # under the 64 KiB limits


@pytest.fixture
def registered(conn: psycopg.Connection[Any]) -> None:
    """The tasks these tests enqueue from SQL by name, registered as a worker would."""
    conn.execute("INSERT INTO pgqueue.tasks (name) VALUES ('noop'), ('store'), ('t') ON CONFLICT DO NOTHING")


def nested(depth: int) -> dict[str, Any]:
    value: Any = 1
    for _ in range(depth):
        value = {"a": value}
    return value  # type: ignore[no-any-return]


def sql_error(conn: psycopg.Connection[Any], query: str, params: Any = None) -> Exception:
    with pytest.raises(psycopg.Error) as caught:
        conn.execute(query, params)
    return translate(caught.value)


def test_depth_is_counted_without_recursion() -> None:
    assert json_depth("1") == 0 and json_depth("{}") == 1 and json_depth('{"a": [1, {"b": []}]}') == 4
    assert json_depth('{"a": "[[[[{{{{"}') == 1  # brackets inside strings do not count
    assert json_depth('["\\"[[["]') == 1  # nor after an escaped quote
    assert json_depth(DEEP) == 5000
    assert loads_bounded(json.dumps(nested(MAX_JSON_DEPTH))) == nested(MAX_JSON_DEPTH)
    with pytest.raises(InvalidInput, match=f"5000 levels deep, over the limit of {MAX_JSON_DEPTH} levels"):
        loads_bounded(DEEP)
    marker = load_stored_json(DEEP)
    assert isinstance(marker, UndecodableJSON) and "limit of 64 levels" in marker


@pytest.mark.usefixtures("registered")
def test_the_issue_reproduction_is_refused_at_enqueue(conn: psycopg.Connection[Any]) -> None:
    before = conn.execute("SELECT count(*) FROM pgqueue.runs").fetchone()
    error = sql_error(conn, f"SELECT pgqueue.enqueue('noop', {DEEP_SQL})")
    assert isinstance(error, InvalidInput) and "deeper than the limit of 64 levels" in str(error)
    # the limit is exactly 64: the deepest accepted value decodes in Python too
    conn.execute("SELECT pgqueue.enqueue('noop', %s::jsonb)", (json.dumps(nested(64)),))
    error = sql_error(conn, "SELECT pgqueue.enqueue('noop', %s::jsonb)", (json.dumps(nested(65)),))
    assert isinstance(error, InvalidInput)
    empty_65th = '{"a": ' + "[" * 64 + "]" * 64 + "}"
    assert json_depth(empty_65th) == 65
    error = sql_error(conn, "SELECT pgqueue.enqueue('noop', %s::jsonb)", (empty_65th,))
    assert isinstance(error, InvalidInput)  # an empty array at the 65th level counts too
    for what, query in (
            ("metadata", f"SELECT pgqueue.enqueue('noop', metadata => {DEEP_SMALL_SQL})"),
            ("trace_context", f"SELECT pgqueue.enqueue('noop', trace_context => {DEEP_SMALL_SQL})"),
            ("rate_cost", f"SELECT pgqueue.enqueue('noop', rate_cost => {DEEP_SMALL_SQL})"),
            ("the payload of event", f"SELECT pgqueue.send_event('e', 'k', {DEEP_SQL})"),
            ("input #1", f"SELECT pgqueue.enqueue_many('noop', ARRAY['{{}}'::jsonb, {DEEP_SQL}])")):
        error = sql_error(conn, query)
        assert isinstance(error, InvalidInput) and what in str(error) and "64 levels" in str(error), what
    after = conn.execute("SELECT count(*) FROM pgqueue.runs").fetchone()
    assert after is not None and before is not None and after[0] == before[0] + 1


def test_python_client_refuses_deep_input(app: PgQueue) -> None:
    with pytest.raises(InvalidInput, match="64 levels"):
        app.enqueue("noop", nested(100), queue="default")


async def test_a_stored_deep_input_fails_alone_and_the_worker_lives(dsn: str,
                                                                   conn: psycopg.Connection[Any]) -> None:
    bind(hostile_app, dsn)
    try:
        hostile_app.register_tasks()
        good = [takes_anything.enqueue(i) for i in range(3)]
        # written around pgqueue.enqueue, as an old version or a plain INSERT could have
        (bad,) = conn.execute(
            f"""WITH r AS (INSERT INTO pgqueue.runs (task, queue, priority, input, run_at)
                           VALUES ('takes_anything', 'default', 0, {DEEP_SQL}, now())
                           RETURNING id, task, queue, run_at)
                INSERT INTO pgqueue.ready (run_id, queue, priority, run_at, task)
                SELECT id, queue, 0, run_at, task FROM r RETURNING run_id""").fetchone()  # type: ignore[misc]
        async with running_worker(hostile_app, concurrency=8):
            async def finished() -> bool:
                rows = conn.execute("SELECT count(*) FROM pgqueue.runs WHERE id = ANY(%s) AND status IN "
                                    "('succeeded', 'failed')", ([h.id for h in good] + [bad],)).fetchone()
                return rows is not None and rows[0] == 4
            await wait_for(finished, what="the batch to finish")
            # the worker still takes new work (and its exit at the end raises anything it died of)
            after = await takes_anything.enqueue_async(99)
            assert await after.result(timeout=20) == 99
        info = hostile_app.get_run(bad).info()
        assert info.status == "failed" and info.error["type"] == "InvalidInput"
        assert "over the limit of 64 levels" in info.error["message"]
        assert [h.result(timeout=5) for h in good] == [0, 1, 2]
        # readers show the run instead of crashing
        assert isinstance(info.input, UndecodableJSON)
    finally:
        bind(hostile_app, None)
    env = {"PGQUEUE_DSN": dsn, "PATH": "/usr/bin:/bin"}
    for args in (("runs", "show", str(bad)), ("runs", "show", str(bad), "--json")):
        shown = subprocess.run([sys.executable, "-m", "pgqueue_cli", *args], env=env, capture_output=True,
                               text=True, timeout=60)
        assert shown.returncode == 0 and "Traceback" not in shown.stderr, shown.stderr
        assert "64 levels" in shown.stdout


def test_a_stored_deep_result_raises_invalid_input_from_the_handle(app: PgQueue,
                                                                  conn: psycopg.Connection[Any]) -> None:
    handle = app.enqueue("noop", {}, queue="default")
    conn.execute(f"UPDATE pgqueue.runs SET status = 'succeeded', result = {DEEP_SQL}, finished_at = now() "
                 "WHERE id = %s", (handle.id,))
    with pytest.raises(InvalidInput, match="64 levels"):
        handle.result(timeout=5)


@pytest.mark.usefixtures("registered")
def test_a_session_set_no_longer_lifts_the_size_limit(app: PgQueue, dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as own:
        own.execute("SET pgqueue.max_input_bytes = 100000000")
        with pytest.raises(InputTooLarge, match="over the limit of 1048576 bytes"):
            app.enqueue("store", {"text": "y" * 2_000_000}, connection=own, queue="default")
        for option in ("metadata", "trace_context"):
            error = sql_error(own, f"SELECT pgqueue.enqueue('store', {option} => "
                                   "jsonb_build_object('x', repeat('z', 70000)))")
            assert isinstance(error, InputTooLarge) and f"{option} is" in str(error)
            assert "over the limit of 65536 bytes" in str(error)
        # only the schema's owner can change it; PUBLIC has no right on the table
        privileges = own.execute("SELECT has_table_privilege('public', 'pgqueue.settings', 'UPDATE')").fetchone()
        assert privileges == (False,)


@pytest.mark.parametrize("dsn", [
    "postgresql+foo://user:secret@host/db",            # an unknown driver: does not parse
    "postgresql://user:secret@host/db?sslmode",         # a query parameter without "="
    "host=h password=secret dbname",                    # a keyword without "="
    "host=h password='secret' port",
])
def test_an_unparsable_dsn_never_shows_its_password(dsn: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        check_dsn_syntax(dsn)
    assert "secret" not in str(caught.value) and "not valid" in str(caught.value)
    assert "secret" not in mask_password(f"x {dsn} y", dsn)


def test_sqlalchemy_style_urls_are_accepted(dsn: str) -> None:
    params = conninfo_to_dict(dsn)
    for driver in ("psycopg", "psycopg2", "asyncpg"):
        url = f"postgresql+{driver}://{params['user']}@{params['host']}:{params['port']}/{params['dbname']}"
        with connect(url) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    assert normalize_dsn("postgres+asyncpg://u:p@h/db") == "postgres://u:p@h/db"


def test_the_cli_never_prints_the_password(dsn: str) -> None:
    for url in ("postgresql+psycopg://user:secret@127.0.0.1:1/db", "postgresql+foo://user:secret@host/db"):
        result = subprocess.run([sys.executable, "-m", "pgqueue_cli", "runs", "list"], capture_output=True,
                                text=True, timeout=60, env={"DATABASE_URL": url, "PATH": "/usr/bin:/bin"})
        assert result.returncode == 1 and "secret" not in result.stdout + result.stderr, result
        assert "Traceback" not in result.stderr


hostile_app = PgQueue()


@hostile_app.task(retry=Retry(max_attempts=3, initial_delay=0.05, jitter=0))
async def returns(kind: str) -> Any:
    if kind == "big":
        return "x" * 2_000_000
    if kind == "deep":
        return nested(100)
    return kind


@hostile_app.task(retry=Retry(max_attempts=3, initial_delay=0.05, jitter=0))
async def with_a_step() -> Any:
    async def load() -> int:
        return 1
    return await current_run().step("load", load)


async def test_results_and_step_outputs_over_the_limits_fail_their_run_alone(dsn: str,
                                                                           conn: psycopg.Connection[Any]) -> None:
    bind(hostile_app, dsn)
    try:
        hostile_app.register_tasks()
        big, deep, fine = (returns.enqueue(kind) for kind in ("big", "deep", "fine"))
        stepped = with_a_step.enqueue()
        # a step output written around check_payload, replayed by the next attempt
        conn.execute(f"""INSERT INTO pgqueue.steps (run_id, step_key, seq, name, status, output)
                         VALUES (%s, 'load#0', 0, 'load', 'succeeded', {DEEP_SQL})""", (stepped.id,))
        conn.execute("UPDATE pgqueue.runs SET attempt = 1 WHERE id = %s", (stepped.id,))
        async with running_worker(hostile_app, concurrency=8):
            async def finished() -> bool:
                rows = conn.execute("SELECT count(*) FROM pgqueue.runs WHERE id = ANY(%s) AND status IN "
                                    "('succeeded', 'failed')", ([big.id, deep.id, fine.id, stepped.id],)).fetchone()
                return rows is not None and rows[0] == 4
            await wait_for(finished, what="the runs to finish")
        assert fine.result(timeout=5) == "fine"
        for handle, error_type, message in ((big, "InputTooLarge", "over the limit of 1048576 bytes"),
                                            (deep, "InvalidInput", "over the limit of 64 levels"),
                                            (stepped, "InvalidInput", "over the limit of 64 levels")):
            info = handle.info()
            assert info.status == "failed" and info.attempt == (2 if handle is stepped else 1), info
            assert info.error["type"] == error_type and message in info.error["message"], info.error
    finally:
        bind(hostile_app, None)


BAD_NAMES = ["", "a\nb", "x" * 201, "1abc", "a b", "é", "a;drop", "\x1b[31m", "a\rb", "a/b"]


@pytest.mark.usefixtures("registered")
def test_names_are_checked_by_the_database(conn: psycopg.Connection[Any]) -> None:
    before = conn.execute("SELECT count(*) FROM pgqueue.runs").fetchone()
    for name in BAD_NAMES:
        for what, query, params in (
                ("task", "SELECT pgqueue.enqueue(%s)", (name,)),
                ("queue", "SELECT pgqueue.enqueue('t', queue => %s)", (name,)),
                ("queue", "SELECT pgqueue.enqueue_many('t', ARRAY['{}'::jsonb], queue => %s)", (name,)),
                ("event", "SELECT pgqueue.send_event(%s)", (name,)),
                ("rate limit", "SELECT pgqueue.set_rate_limit(%s, 1, 1)", (name,)),
                ("queue", "SELECT pgqueue.pause_queue(%s)", (name,))):
            error = sql_error(conn, query, params)
            assert isinstance(error, InvalidInput), (what, name, error)
            assert f"{what} name" in str(error)
            assert "1 to 200 characters" in str(error) or (name == "" and "is empty" in str(error))
            assert "\n" not in str(error).partition(". ")[0]  # the name is quoted, never raw
    # the longest valid name is accepted, and Python's rule is the same one
    longest = "a" * 200
    conn.execute("SELECT pgqueue.enqueue(%s, queue => %s)", (longest, longest))
    for name in BAD_NAMES:
        with pytest.raises(InvalidInput):
            check_name("queue", name)
        assert conn.execute("SELECT pgqueue.name_ok(%s)", (name,)).fetchone() in ((False,), (None,))
    assert check_name("queue", longest) == longest
    after = conn.execute("SELECT count(*) FROM pgqueue.runs").fetchone()
    assert before is not None and after == (before[0] + 1,)


def test_python_and_cli_enqueue_by_name_get_the_same_rule(app: PgQueue, cli_env: dict[str, str]) -> None:
    with pytest.raises(InvalidInput, match=r"queue name .* is not valid"):
        app.enqueue("noop", {}, queue="a\nforged-row")
    with pytest.raises(InvalidInput, match="task name of 100000 characters is not valid"):
        app.enqueue("t" * 100_000, {}, queue="default")
    result = subprocess.run([sys.executable, "-m", "pgqueue_cli", "enqueue", "noop", "--queue", "a\nb"],
                            env=cli_env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "queue name" in result.stderr and "Traceback" not in result.stderr


def test_a_stored_name_with_a_newline_cannot_forge_a_status_row(conn: psycopg.Connection[Any],
                                                                cli_env: dict[str, str]) -> None:
    # written around the functions (an old version): shown escaped, on one line
    conn.execute("""WITH r AS (INSERT INTO pgqueue.runs (task, queue, priority, input, run_at)
                               VALUES ('t', E'evil\\nforged   999', 0, '{}', now()) RETURNING id, queue, run_at)
                    INSERT INTO pgqueue.ready (run_id, queue, priority, run_at, task)
                    SELECT id, queue, 0, run_at, 't' FROM r""")
    result = subprocess.run([sys.executable, "-m", "pgqueue_cli", "status", "--iterations", "1"], env=cli_env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "evil\\nforged" in result.stdout
    assert not any(line.startswith("forged") for line in result.stdout.splitlines())


def test_catch_up_limit_below_one_is_refused(conn: psycopg.Connection[Any]) -> None:
    for limit in (0, -5):
        with pytest.raises(ConfigurationError, match="catch_up_limit must be at least 1"):
            Schedule("s", "* * * * *", "t", misfire="catch_up", catch_up_limit=limit)
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute("""INSERT INTO pgqueue.cron_schedules (name, expression, timezone, task, input,
                                misfire_policy, catch_up_limit, source)
                            VALUES ('s', '* * * * *', 'UTC', 't', '{}', 'catch_up', %s, 'runtime')""", (limit,))
    with pytest.raises(ConfigurationError, match="schedule name"):
        Schedule("a\nb", "* * * * *", "t")


@hostile_app.task
def takes_anything(data: Any = None) -> Any:
    return data


def test_a_task_of_the_app_refuses_deep_input(dsn: str, conn: psycopg.Connection[Any]) -> None:
    # pydantic's own serialization depth limit (found by the fuzzing test) is an InvalidInput too
    bind(hostile_app, dsn)
    count = "SELECT count(*) FROM pgqueue.runs WHERE task = 'takes_anything'"
    try:
        before = conn.execute(count).fetchone()
        for depth in (65, 300, 3000):
            with pytest.raises(InvalidInput, match="64 levels"):
                takes_anything.enqueue(nested(depth))
        assert conn.execute(count).fetchone() == before
    finally:
        bind(hostile_app, None)
