"""The dashboard over HTTP: binding and token rules, pages, filters, bad input, guarded actions, /metrics."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import pytest

import dashboard_app
from conftest import bind, running_worker, wait_for
from pgqueue import ConfigurationError
from pgqueue.dashboard import create_server
from pgqueue.dashboard.pages import BadFilter, parse_filters
from pgqueue.dashboard.queries import RunFilters, list_runs_op
from pgqueue.dashboard.server import DashboardServer

TOKEN = "s3cret-token"


def serve(dsn: str, token: str | None = None) -> DashboardServer:
    server = create_server(dsn, "127.0.0.1", 0, token, dashboard_app.app)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def tasks(dsn: str) -> Iterator[Any]:
    bind(dashboard_app.app, dsn)
    dashboard_app.app.register_tasks()
    yield dashboard_app
    bind(dashboard_app.app, None)


@pytest.fixture(scope="module")
def open_server(dsn: str, tasks: Any) -> Iterator[DashboardServer]:
    server = serve(dsn)
    yield server
    server.shutdown()
    server.dash.app.close()


@pytest.fixture(scope="module")
def token_server(dsn: str, tasks: Any) -> Iterator[DashboardServer]:
    server = serve(dsn, TOKEN)
    yield server
    server.shutdown()
    server.dash.app.close()


def request(server: DashboardServer, method: str, path: str, body: dict[str, str] | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], str]:
    conn = http.client.HTTPConnection("127.0.0.1", server.server_port, timeout=20)
    data = urlencode(body).encode() if body is not None else None
    all_headers = {"Content-Type": "application/x-www-form-urlencoded", **(headers or {})}
    conn.request(method, path, body=data, headers=all_headers)
    response = conn.getresponse()
    text = response.read().decode()
    conn.close()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, text


def post(server: DashboardServer, path: str, **form: str) -> tuple[int, dict[str, str], str]:
    return request(server, "POST", path, {"csrf": server.dash.auth.csrf, **form})


def test_non_loopback_bind_needs_a_token(dsn: str, cli_env: dict[str, str]) -> None:
    with pytest.raises(ConfigurationError, match=r"refusing to serve the dashboard on 0\.0\.0\.0 without a token: "
                                                 r"set --token \(or PGQUEUE_DASHBOARD_TOKEN\)"):
        create_server(dsn, "0.0.0.0", 0, None)
    result = subprocess.run([sys.executable, "-m", "pgqueue_cli", "dashboard", "--host", "0.0.0.0", "--port", "0"],
                            env=cli_env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "--token" in result.stderr, result.stderr


def test_token_required_on_every_request(token_server: DashboardServer) -> None:
    assert request(token_server, "GET", "/runs")[0] == 401
    assert request(token_server, "GET", "/metrics")[0] == 401
    assert request(token_server, "GET", "/runs", headers={"Authorization": "Bearer wrong"})[0] == 401
    assert request(token_server, "GET", "/runs", headers={"Authorization": f"Bearer {TOKEN}"})[0] == 200
    status, headers, _ = request(token_server, "GET", "/runs", headers={"Accept": "text/html"})
    assert status == 303 and headers["location"].startswith("/login?next=")
    # the login form sets an HttpOnly cookie that holds no token
    assert request(token_server, "POST", "/login", {"token": "guess"})[0] == 401
    status, headers, _ = request(token_server, "POST", "/login?next=/workers", {"token": TOKEN})
    cookie = headers["set-cookie"]
    assert status == 303 and headers["location"] == "/workers" and "HttpOnly" in cookie and TOKEN not in cookie
    session = cookie.split(";")[0]
    assert request(token_server, "GET", "/workers", headers={"Cookie": session})[0] == 200
    assert request(token_server, "GET", "/workers", headers={"Cookie": "pgqueue_dashboard=forged"})[0] == 401
    # static files carry no data and are served to the login page
    assert request(token_server, "GET", "/static/app.css")[0] == 200


async def test_pages_filters_and_metrics(tasks: Any, open_server: DashboardServer) -> None:
    ok = [await tasks.summarize.options(tags=["nightly"], metadata={"tenant": "acme", "tier": 2}).enqueue_async(i)
          for i in range(3)]
    failed = await tasks.flaky.enqueue_async(1)
    scheduled = await tasks.summarize.options(delay=3600).enqueue_async(99)
    workflow = await tasks.ingest.enqueue_async(5)
    async with running_worker(tasks.app):
        for handle in ok:
            await handle.result(timeout=20)
        await workflow.result(timeout=20)
        await wait_for(lambda: _status(failed.id, "failed", tasks), what="the flaky run to fail")
        status, _, metrics = await asyncio.to_thread(request, open_server, "GET", "/metrics")
    assert status == 200
    assert 'pgqueue_queue_runs{queue="default",state="scheduled"} 1' in metrics
    assert 'pgqueue_queue_runs{queue="default",state="queued"} 0' in metrics
    assert "# TYPE pgqueue_workers_alive gauge" in metrics

    def ids(query: dict[str, str]) -> list[int]:
        status, _, html = request(open_server, "GET", "/runs?" + urlencode(query))
        assert status == 200, html
        return [int(part.split('"')[0]) for part in html.split('data-run="')[1:]]

    assert ids({"tag": "nightly"}) == sorted((h.id for h in ok), reverse=True)
    assert ids({"metadata": "tier=2", "task": "summarize"}) == sorted((h.id for h in ok), reverse=True)
    assert ids({"metadata": "tenant=nobody"}) == []
    assert ids({"status": "failed"}) == [failed.id]
    assert ids({"since": "1h", "task": "flaky"}) == [failed.id] and ids({"until": "1h", "task": "flaky"}) == []
    assert scheduled.id in ids({"status": "queued"})
    # keyset paging: pages join up without overlap
    first, more = open_server.dash.app.db.execute(list_runs_op(RunFilters(), None, limit=2), transaction=True)
    second, _ = open_server.dash.app.db.execute(list_runs_op(RunFilters(), first[-1]["id"], limit=2),
                                              transaction=True)
    assert more and first[-1]["id"] > second[0]["id"] and second[0]["id"] == first[-1]["id"] - 1

    for path in ("/", "/workers", "/cron", "/limits", f"/runs/{workflow.id}", f"/runs/{failed.id}"):
        status, _, html = request(open_server, "GET", path)
        assert status == 200, (path, html)
    # a rate-limit bucket on hold shows its units and its hold
    app = open_server.dash.app
    app.set_rate_limit("dash-llm", limit=50, per=10)
    app.hold_rate_limit("dash-llm", 60)
    _, _, page = request(open_server, "GET", "/limits")
    assert "dash-llm" in page and "/ 50</td>" in page and 'class="status paused"' in page
    _, _, page = request(open_server, "GET", f"/runs/{workflow.id}")
    assert 'aria-label="workflow graph"' in page and "outline" in page and "store" in page
    _, _, page = request(open_server, "GET", f"/runs/{failed.id}")
    assert "ProviderDown" in page and "Traceback" in page and "calling the provider for 1" in page
    # live updates fetch only the page's live block
    _, _, fragment = request(open_server, "GET", f"/runs/{failed.id}", headers={"X-Fragment": "live"})
    assert "ProviderDown" in fragment and "<html" not in fragment
    await asyncio.to_thread(tasks.app.cancel, scheduled.id)


async def _status(run_id: int, expected: str, tasks: Any) -> bool:
    return (await tasks.app.get_async_run(run_id).info()).status == expected


def test_bad_input_gets_clear_answers(open_server: DashboardServer, tasks: Any) -> None:
    status, _, html = request(open_server, "GET", "/runs/987654321")
    assert status == 404 and "no run with id 987654321" in html
    assert request(open_server, "GET", "/nowhere")[0] == 404
    for query, message in (("status=bogus", "is not one of"), ("since=yesterday-ish", "neither an ISO time"),
                           ("metadata=tenant", "is not key=value"), ("before=abc", "is not a run id")):
        status, _, html = request(open_server, "GET", f"/runs?{query}")
        assert status == 400 and message in html, query
    with pytest.raises(BadFilter):
        parse_filters({"until": "2026-13-45"}, now=__import__("datetime").datetime.now())


def test_without_a_token_only_loopback_host_names_are_answered(open_server: DashboardServer,
                                                               token_server: DashboardServer) -> None:
    # a site whose name was re-pointed at 127.0.0.1 (DNS rebinding) must not read pages or act
    status, _, text = request(open_server, "GET", "/runs", headers={"Host": "evil.example:8088"})
    assert status == 403 and "loopback" in text
    for host in ("127.0.0.1:8088", "localhost:8088", "[::1]:8088"):
        assert request(open_server, "GET", "/runs", headers={"Host": host})[0] == 200, host
    # with a token, the token decides
    assert request(token_server, "GET", "/runs", headers={"Host": "dash.example",
                                                          "Authorization": f"Bearer {TOKEN}"})[0] == 200


def test_actions_are_guarded(open_server: DashboardServer, tasks: Any, dsn: str) -> None:
    run = tasks.app.enqueue("summarize", {"doc_id": 1}, queue="nowhere")  # a queue no worker serves
    status, _, html = post(open_server, f"/runs/{run.id}/retry", back=f"/runs/{run.id}")
    assert status == 409 and "only failed, cancelled or dead runs can be retried" in html
    status, _, html = post(open_server, f"/runs/{run.id}/send_event", event="approval", key="x", payload="{}")
    assert status == 409 and "only a waiting run" in html
    # without the form's CSRF token, or from another site: refused, nothing done
    assert request(open_server, "POST", f"/runs/{run.id}/cancel", {"back": "/"})[0] == 403
    status, _, _ = request(open_server, "POST", f"/runs/{run.id}/cancel", {"csrf": open_server.dash.auth.csrf},
                           headers={"Origin": "http://evil.example"})
    assert status == 403 and tasks.app.get_run(run.id).info().status == "queued"
    status, headers, _ = post(open_server, f"/runs/{run.id}/cancel", back=f"/runs/{run.id}")
    assert status == 303 and headers["location"].startswith(f"/runs/{run.id}?done=")
    assert tasks.app.get_run(run.id).info().status == "cancelled"
    status, _, html = post(open_server, f"/runs/{run.id}/cancel")
    assert status == 409 and "cannot be cancelled" in html
    # an open redirect is not possible through `back`
    status, headers, _ = post(open_server, "/queues/nowhere/pause", back="//evil.example/")
    assert status == 303 and headers["location"].startswith("/?done=")
    assert post(open_server, "/queues/nowhere/resume")[0] == 303
    assert post(open_server, "/cron/no-such-schedule/trigger")[0] == 409


def test_core_does_not_import_the_extra() -> None:
    code = ("import sys, pgqueue, pgqueue.worker, pgqueue_cli.main, pgqueue.dashboard; "
            "assert 'jinja2' not in sys.modules, 'jinja2 imported'; print(json.dumps(sorted(sys.modules))[:0])")
    result = subprocess.run([sys.executable, "-c", "import json; " + code], capture_output=True, text=True,
                            timeout=60, env={**os.environ})
    assert result.returncode == 0, result.stderr
    assert json  # (json is used by the subprocess)


def test_overview_shows_retention_and_the_last_prune(open_server: DashboardServer, conn: Any) -> None:
    conn.execute("INSERT INTO pgqueue.tasks (name) VALUES ('dash_pruned') ON CONFLICT DO NOTHING")
    status, _, page = request(open_server, "GET", "/")
    assert status == 200 and "succeeded 7d, failed 30d, cancelled 30d, dead 30d, events 7d" in page
    run_id = conn.execute("SELECT pgqueue.enqueue('dash_pruned', '{}')").fetchone()[0]
    conn.execute("DELETE FROM pgqueue.ready WHERE run_id = %s", (run_id,))
    conn.execute("UPDATE pgqueue.runs SET status = 'succeeded', finished_at = now() - interval '8 days' "
                 "WHERE id = %s", (run_id,))
    conn.execute("SELECT pgqueue.set_retention('1 hour', 'failed', 'dash_pruned')")
    pruned = conn.execute("SELECT runs FROM pgqueue.prune(1000)").fetchone()[0]
    assert pruned >= 1
    status, _, page = request(open_server, "GET", "/")
    assert status == 200 and "Task policies: dash_pruned failed 1h." in page
    assert "Last prune" in page and f"{pruned} run(s) in" in page
    _, _, metrics = request(open_server, "GET", "/metrics")
    assert "pgqueue_pruned_runs_total" in metrics
