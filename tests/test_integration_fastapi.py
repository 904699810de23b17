"""examples/fastapi_app.py over real HTTP (uvicorn): lifespan, enqueue in the request's own
transaction (psycopg, SQLAlchemy async and sync), and the dashboard mounted behind the app's auth."""

from __future__ import annotations

import re
import sys
from collections.abc import AsyncIterator
from typing import Any

import httpx
import psycopg
import pytest
from fastapi import FastAPI

from asgi_server import serving
from conftest import ROOT, bind, running_worker
from pgqueue import ConfigurationError, PgQueue
from pgqueue.dashboard import create_asgi_app
from pgqueue.dashboard.routes import MAX_FORM

sys.path.insert(0, str(ROOT / "examples"))

import fastapi_app

pytestmark = pytest.mark.timeout(180)
ADMIN = "admin-secret"
MOUNT = "/admin/pgqueue"
SIGNUPS = ("/signups", "/orm/signups", "/sync/signups")


@pytest.fixture
async def base_url(dsn: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[str]:
    monkeypatch.setenv("ADMIN_TOKEN", ADMIN)
    bind(fastapi_app.queue, dsn)
    async with serving(fastapi_app.create_app()) as url:
        yield url
    bind(fastapi_app.queue, None)


def rows(dsn: str, query: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(query, params).fetchall()  # type: ignore[arg-type]


async def test_signup_and_its_run_commit_or_roll_back_together(base_url: str, dsn: str) -> None:
    created: dict[str, int] = {}
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        for path in SIGNUPS:
            email = f"ok{path.replace('/', '.')}@example.com"
            answer = await client.post(path, json={"email": email})
            assert answer.status_code == 201, answer.text
            created[email] = answer.json()["run_id"]
            # the dependency committed before the response was sent: both rows are there
            assert rows(dsn, "SELECT count(*) FROM users WHERE email = %s", email) == [(1,)]
            assert rows(dsn, "SELECT task, queue, status FROM pgqueue.runs WHERE id = %s",
                        created[email]) == [("send_welcome", "email", "queued")]
            failed = f"failed{path.replace('/', '.')}@example.com"
            answer = await client.post(path, json={"email": failed, "fail_after_enqueue": True})
            assert answer.status_code == 500, answer.text
            assert rows(dsn, "SELECT count(*) FROM users WHERE email = %s", failed) == [(0,)]
            assert rows(dsn, "SELECT count(*) FROM pgqueue.runs WHERE input->>'email' = %s", failed) == [(0,)]
    async with running_worker(fastapi_app.queue, queues=["email"]):
        for email, run_id in created.items():
            result = await fastapi_app.queue.get_async_run(run_id).result(timeout=30)
            assert result.startswith(f"welcome sent to {email}")


async def test_dashboard_is_mounted_behind_the_apps_own_check(base_url: str, dsn: str) -> None:
    later = await fastapi_app.send_welcome.options(delay=3600).enqueue_async(7, "later@example.com")
    admin = {"X-Admin-Token": ADMIN}
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        # the application's own answer (FastAPI's HTTPException raised by the authorize check)
        refused = await client.get(f"{MOUNT}/", headers={"Accept": "text/html"})
        assert refused.status_code == 401 and refused.json() == {"detail": "admins only"}
        assert (await client.get(f"{MOUNT}/runs", headers={"X-Admin-Token": "wrong"})).status_code == 401
        assert (await client.get(f"{MOUNT}/static/app.css")).status_code == 401

        overview = await client.get(f"{MOUNT}/", headers=admin)
        assert overview.status_code == 200 and "text/html" in overview.headers["content-type"]
        assert overview.headers["x-frame-options"] == "DENY"
        # every link and asset is under the mount
        assert f'href="{MOUNT}/runs"' in overview.text and f'href="{MOUNT}/static/app.css"' in overview.text
        assert not re.search(r'(href|src|action)="/(?!admin/pgqueue)', overview.text)
        css = await client.get(f"{MOUNT}/static/app.css", headers=admin)
        assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
        # no login page of its own: the application decides
        login = await client.get(f"{MOUNT}/login", headers=admin)
        assert login.status_code == 303 and login.headers["location"] == f"{MOUNT}/"

        page = await client.get(f"{MOUNT}/runs/{later.id}", headers=admin)
        assert page.status_code == 200 and f'action="{MOUNT}/runs/{later.id}/cancel"' in page.text
        live = await client.get(f"{MOUNT}/runs/{later.id}", headers={**admin, "X-Fragment": "live"})
        assert live.status_code == 200 and "<html" not in live.text
        match = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert match is not None
        csrf = match[1]

        cancel = f"{MOUNT}/runs/{later.id}/cancel"
        back = f"{MOUNT}/runs/{later.id}"
        assert (await client.post(cancel, headers=admin, data={"back": back})).status_code == 403
        foreign = await client.post(cancel, headers={**admin, "Origin": "http://evil.example"},
                                    data={"csrf": csrf, "back": back})
        assert foreign.status_code == 403
        assert rows(dsn, "SELECT status FROM pgqueue.runs WHERE id = %s", later.id) == [("queued",)]
        done = await client.post(cancel, headers=admin, data={"csrf": csrf, "back": back})
        assert done.status_code == 303 and done.headers["location"].startswith(f"{back}?done=")
        assert rows(dsn, "SELECT status FROM pgqueue.runs WHERE id = %s", later.id) == [("cancelled",)]
        # a `back` outside the mount goes to the dashboard's front page, not elsewhere on the site
        other = await fastapi_app.send_welcome.options(delay=3600).enqueue_async(8, "other@example.com")
        away = await client.post(f"{MOUNT}/runs/{other.id}/cancel", headers=admin,
                                 data={"csrf": csrf, "back": "/signups"})
        assert away.status_code == 303 and away.headers["location"].startswith(f"{MOUNT}/?done=")

        metrics = await client.get(f"{MOUNT}/metrics", headers=admin)
        assert metrics.status_code == 200 and "# TYPE pgqueue_workers_alive gauge" in metrics.text
        too_big = await client.post(cancel, headers=admin, content=b"x" * (MAX_FORM + 1))
        assert too_big.status_code == 413
        # the application's own routes are untouched by the mount
        assert (await client.get("/docs")).status_code == 200


async def test_dashboard_with_its_own_token_under_a_mount(dsn: str) -> None:
    queue = PgQueue(dsn)
    outer = FastAPI()
    dashboard = create_asgi_app(queue, token="tok")
    outer.mount("/ops", dashboard)
    try:
        async with serving(outer) as url, httpx.AsyncClient(base_url=url, timeout=30) as client:
            html = {"Accept": "text/html"}
            first = await client.get("/ops/runs?task=x", headers=html)
            assert first.status_code == 303
            assert first.headers["location"] == "/ops/login?next=%2Fops%2Fruns%3Ftask%3Dx"
            assert (await client.get("/ops/runs")).status_code == 401
            assert (await client.get("/ops/runs", headers={"Authorization": "Bearer tok"})).status_code == 200
            wrong = await client.post("/ops/login?next=/ops/runs", data={"token": "nope"})
            assert wrong.status_code == 401
            login = await client.post("/ops/login?next=/ops/runs", data={"token": "tok"})
            assert login.status_code == 303 and login.headers["location"] == "/ops/runs"
            assert "Path=/ops/" in login.headers["set-cookie"] and "HttpOnly" in login.headers["set-cookie"]
            page = await client.get("/ops/runs", headers=html)  # the client kept the cookie
            assert page.status_code == 200 and 'action="/ops/logout"' in page.text
    finally:
        dashboard.close()
        queue.close()


def test_a_mounted_dashboard_needs_a_check_and_shares_csrf_by_secret(dsn: str) -> None:
    queue = PgQueue(dsn)
    with pytest.raises(ConfigurationError, match=r"authorize=.*or token="):
        create_asgi_app(queue)
    with pytest.raises(ConfigurationError, match="not both"):
        create_asgi_app(queue, authorize=lambda scope: True, token="t")

    def csrf(secret: str | None) -> str:
        return create_asgi_app(queue, authorize=lambda scope: True, secret=secret).dash.auth.csrf

    assert csrf("s") == csrf("s")  # two processes with the same secret accept each other's forms
    assert csrf("s") != csrf("other") and csrf(None) != csrf(None)


async def test_bulk_enqueue_on_a_callers_connection_stays_in_its_transaction(dsn: str) -> None:
    """A connection out of autocommit is in the caller's transaction before its first statement:
    a bulk enqueue there used to BEGIN and COMMIT a transaction of its own."""
    bind(fastapi_app.queue, dsn)
    items = [{"user_id": 0, "email": "bulk@example.com"}] * 3
    with psycopg.connect(dsn) as conn:
        fastapi_app.send_welcome.options(connection=conn).enqueue_many(items)
        conn.rollback()
    async with await psycopg.AsyncConnection.connect(dsn) as aconn:
        await fastapi_app.send_welcome.options(connection=aconn).enqueue_many_async(items)
        await aconn.rollback()
    assert rows(dsn, "SELECT count(*) FROM pgqueue.runs WHERE input->>'email' = 'bulk@example.com'") == [(0,)]
    bind(fastapi_app.queue, None)


async def test_the_dashboard_alone_under_an_asgi_server(dsn: str) -> None:
    """Not mounted: served at the root, its lifespan opens the pool at start and closes it."""
    queue = PgQueue(dsn)
    dashboard = create_asgi_app(queue, token="tok")
    async with serving(dashboard) as url:
        assert queue.db._pool is not None  # opened by the lifespan's start-up
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            page = await client.get("/runs", headers={"Authorization": "Bearer tok"})
            assert page.status_code == 200 and 'href="/static/app.css"' in page.text
            assert (await client.get("/runs")).status_code == 401
    assert queue.db._pool is None  # closed by the lifespan's shutdown
