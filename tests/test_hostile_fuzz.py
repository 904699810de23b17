"""Fuzzing the public entry points with hostile names, sizes, nesting and encodings.

Every call must succeed or fail with pgqueue's own error (a PgQueueError in Python, a PQ00x
SQLSTATE or a data error translated to one from SQL, a one-line `Error:` from the CLI, a 4xx
from the dashboard); a worker serving the same database stays alive throughout; and the runs
stored before the fuzzing are all still there, unchanged. Example counts stay modest so that
the whole file runs in well under a minute.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlencode

import psycopg
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import FAST, bind
from pgqueue import PgQueue
from pgqueue.dashboard import create_server
from pgqueue.dashboard.routes import MAX_FORM
from pgqueue.dashboard.server import DashboardServer
from pgqueue.errors import PgQueueError
from pgqueue.ops import translate
from pgqueue.worker import Worker, WorkerSettings
from pgqueue_cli.main import main as cli_main

# the worker serving the database meanwhile draws retry jitter from `random` in its own thread,
# which hypothesis (watching the module) would report as a strategy using it
pytestmark = pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning")

fuzz_app = PgQueue()


@fuzz_app.task
def echo(data: Any = None) -> Any:
    return data


def nested(depth: int, leaf: Any = 1) -> Any:
    value = leaf
    for i in range(depth):
        value = {"a": value} if i % 2 else [value]
    return value


HOSTILE_NAMES = ["", " ", "a\nb", "a\r\nSet-Cookie: x=1", "x" * 200, "x" * 201, "t" * 100_000, "a\x00b",
                 "\ud800", "é", "../../etc/passwd", "'; DROP TABLE pgqueue.runs; --", "\x1b[31mred", "echo",
                 "default", "a" * 63 + "é"]
names = st.one_of(st.sampled_from(HOSTILE_NAMES), st.from_regex(r"\A[A-Za-z_][A-Za-z0-9_.:-]{0,40}\Z"),
                  st.text(max_size=60))


def encodable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


# a str with a lone surrogate never leaves a raw SQL caller's driver: pgqueue is not reached
sql_names = names.filter(encodable)
scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**80), max_value=2**80),
                    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=40))
json_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                             st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                           max_leaves=12)
inputs = st.one_of(
    st.dictionaries(st.text(max_size=12), json_values, max_size=4),
    st.integers(min_value=0, max_value=400).map(lambda depth: {"data": nested(depth)}),
    st.sampled_from([0, 1000, 1_047_000, 1_100_000]).map(lambda size: {"data": "x" * size}),
    json_values,  # not an object at all, sometimes
)


@pytest.fixture(scope="module")
def stored(dsn: str) -> Iterator[list[tuple[Any, ...]]]:
    """Runs stored before the fuzzing, and a worker serving the database while it goes on."""
    bind(fuzz_app, dsn)
    fuzz_app.register_tasks()
    handles = [fuzz_app.enqueue("echo", {"data": {"n": i}}, queue="keep") for i in range(5)]
    with psycopg.connect(dsn) as conn:
        before = conn.execute("SELECT id, task, queue, input::text FROM pgqueue.runs WHERE id = ANY(%s) ORDER BY id",
                              ([h.id for h in handles],)).fetchall()
    worker = Worker(fuzz_app, WorkerSettings(**{**FAST, "queues": ["default"], "concurrency": 4}))
    died: list[BaseException] = []
    loop = asyncio.new_event_loop()

    def serve() -> None:
        try:
            loop.run_until_complete(worker.serve())
        except BaseException as exc:  # recorded: the test fails if the worker died
            died.append(exc)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield before
    assert thread.is_alive() and not died, f"the worker died: {died!r}"
    loop.call_soon_threadsafe(worker.request_stop)
    thread.join(60)
    loop.run_until_complete(fuzz_app.db.aclose())  # its async pool lives on this loop
    loop.close()
    assert not died, f"the worker died: {died!r}"
    with psycopg.connect(dsn) as conn:
        after = conn.execute("SELECT id, task, queue, input::text FROM pgqueue.runs WHERE id = ANY(%s) ORDER BY id",
                             ([row[0] for row in before],)).fetchall()
    assert after == before, "runs stored before the fuzzing changed or were lost"
    fuzz_app.close()
    bind(fuzz_app, None)


FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                        HealthCheck.function_scoped_fixture,
                                                                        HealthCheck.data_too_large])


def clear(message: str) -> None:
    assert message.strip() and "Traceback" not in message and len(message) < 2000, message


@FUZZ
@given(task=sql_names, queue=st.one_of(st.none(), sql_names), data=inputs,
       metadata=st.one_of(st.none(), json_values))
def test_sql_enqueue(stored: Any, dsn: str, task: str, queue: str | None, data: Any, metadata: Any) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        try:
            conn.execute("SELECT pgqueue.enqueue(%s, %s::jsonb, queue => %s, metadata => %s::jsonb)",
                         (task, json.dumps(data), queue, None if metadata is None else json.dumps(metadata)))
        except psycopg.Error as exc:
            error = translate(exc)
            assert isinstance(error, PgQueueError), f"{type(exc).__name__}: {exc}"
            clear(str(error))


@FUZZ
@given(task=names, queue=st.one_of(st.none(), names), data=inputs)
def test_python_enqueue_by_name(stored: Any, task: str, queue: str | None, data: Any) -> None:
    try:
        fuzz_app.enqueue(task, data, queue=queue)
    except PgQueueError as exc:
        clear(str(exc))


@settings(FUZZ, max_examples=25)
@given(task=names, queue=st.one_of(st.none(), names), data=inputs)
def test_cli_enqueue(stored: Any, dsn: str, task: str, queue: str | None, data: Any) -> None:
    args = ["enqueue", task, "--input", json.dumps(data), "--dsn", dsn]
    if queue is not None:
        args += ["--queue", queue]
    result = CliRunner().invoke(cli_main, args)
    if result.exit_code == 2:  # click's usage error (a name that reads as an option, say): usage + one error line
        assert isinstance(result.exception, SystemExit), result.exception
        assert result.output.strip().splitlines()[-1].startswith("Error: "), result.output
    elif result.exit_code != 0:
        assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.exception
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
        clear(lines[0])


@pytest.fixture(scope="module")
def dashboard(dsn: str, stored: Any) -> Iterator[DashboardServer]:
    server = create_server(dsn, "127.0.0.1", 0, "fuzz-token", None, timeout=1)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.dash.app.close()


FILTERS = ["task", "status", "queue", "tag", "metadata", "key", "since", "until", "before"]


@FUZZ
@given(path=st.sampled_from(["/runs", "/", "/workers", "/cron", "/limits", "/runs/1", "/nope"]),
       params=st.dictionaries(st.sampled_from(FILTERS), st.one_of(names, st.sampled_from(
           ["99999999d", "99999999999999999999", "a=1e999999", "-1", "2026-13-45", "a=" + "[" * 500])), max_size=3),
       raw_path=st.text(max_size=30))
def test_dashboard_get(dashboard: DashboardServer, path: str, params: dict[str, str], raw_path: str) -> None:
    for target in (path + "?" + urlencode({k: v.encode("utf-8", "surrogatepass") for k, v in params.items()}),
                   "/" + quote(raw_path.encode("utf-8", "surrogatepass"))):
        conn = http.client.HTTPConnection("127.0.0.1", dashboard.server_port, timeout=20)
        try:
            conn.request("GET", target, headers={"Authorization": "Bearer fuzz-token"})
        except (BrokenPipeError, ConnectionResetError):
            # a request line over the server's limit: refused (414) and closed while still being sent
            assert len(target) > 60_000, len(target)
            continue
        response = conn.getresponse()
        response.read()
        conn.close()
        assert response.status < 500, (target, response.status)


@FUZZ
@given(path=st.sampled_from(["/login", "/logout", "/runs/1/cancel", "/queues/x/pause", "/cron/x/run", "/queues/pause"]),
       # the right token now and then, so that a login succeeds and redirects to `next`
       form=st.dictionaries(st.sampled_from(["token", "csrf", "queue", "back", "run_at", "next"]),
                            st.one_of(names, st.just("fuzz-token")), max_size=4),
       next_value=names, length=st.one_of(st.none(), st.sampled_from(["-1", "abc", "999999999", "1", "0"])))
def test_dashboard_post(dashboard: DashboardServer, path: str, form: dict[str, str], next_value: str,
                        length: str | None) -> None:
    body = urlencode({k: v.encode("utf-8", "surrogatepass") for k, v in form.items()}).encode()
    conn = http.client.HTTPConnection("127.0.0.1", dashboard.server_port, timeout=20)
    conn.putrequest("POST", f"{path}?next={quote(next_value.encode('utf-8', 'surrogatepass'))}")
    conn.putheader("Authorization", "Bearer fuzz-token")
    conn.putheader("Content-Type", "application/x-www-form-urlencoded")
    conn.putheader("Content-Length", length if length is not None else str(len(body)))
    try:
        conn.endheaders(body if length is None else b"")
    except (BrokenPipeError, ConnectionResetError):
        # the server may refuse a request line (414) or a form (413) over its limit and close before the
        # client has sent it all; its answer may then be lost with the connection's reset
        too_long = len(next_value.encode("utf-8", "surrogatepass")) > 60_000 or len(body) > MAX_FORM
        assert too_long, (path, len(next_value), len(body))
        return
    response = conn.getresponse()
    response.read()
    conn.close()
    assert response.status < 500, (path, form, length, response.status)
    location = response.getheader("Location") or "/"
    assert location.startswith("/") and not location.startswith("//") and "\\" not in location
