"""The dashboard against a hostile client: body lengths, slow clients, the login's `next`,
the login cookie, filter values that once answered 500, and runs whose stored JSON is too deep."""

from __future__ import annotations

import http.client
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

import dashboard_app
from conftest import bind
from pgqueue.dashboard import create_server
from pgqueue.dashboard.auth import Auth
from pgqueue.dashboard.routes import MAX_FORM
from pgqueue.dashboard.routes import local_path as _local
from pgqueue.dashboard.server import DashboardServer

TOKEN = "hostile-token"


def serve(dsn: str, token: str | None = None, **options: Any) -> DashboardServer:
    server = create_server(dsn, "127.0.0.1", 0, token, dashboard_app.app, **options)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def tasks(dsn: str) -> Iterator[Any]:
    bind(dashboard_app.app, dsn)
    dashboard_app.app.register_tasks()
    yield dashboard_app
    bind(dashboard_app.app, None)


@pytest.fixture(scope="module")
def server(dsn: str, tasks: Any) -> Iterator[DashboardServer]:
    # a short request timeout, so that the slow-client test is quick
    srv = serve(dsn, TOKEN, secure_cookie=True, timeout=1.5)
    yield srv
    srv.shutdown()
    srv.dash.app.close()


def raw(server: DashboardServer, data: bytes, timeout: float = 10) -> bytes:
    """Send raw bytes, return everything the server answers until it closes or goes quiet."""
    with socket.create_connection(("127.0.0.1", server.server_port), timeout=timeout) as sock:
        sock.sendall(data)
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except TimeoutError:
            pass
        return answer


def login_post(length: str) -> bytes:
    return (f"POST /login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded\r\n"
            f"Content-Length: {length}\r\n\r\n").encode()


def test_bad_content_lengths_are_refused_without_reading(server: DashboardServer) -> None:
    for length, status in (("-1", b"400"), ("abc", b"400"), ("1e3", b"400"), (str(MAX_FORM + 1), b"413"),
                           ("99999999999999999999", b"413")):
        started = time.monotonic()
        answer = raw(server, login_post(length) + b"token=x" * 10)
        assert answer.split(b" ")[1] == status, (length, answer[:200])
        assert time.monotonic() - started < 1.4, "answered before the request timeout, without reading"
    # two different lengths are refused too (request smuggling)
    answer = raw(server, login_post("5").replace(b"\r\n\r\n", b"\r\nContent-Length: 7\r\n\r\n") + b"token=x")
    assert answer.split(b" ")[1] == b"400"


def test_a_slow_client_is_dropped_and_does_not_block_others(server: DashboardServer) -> None:
    with socket.create_connection(("127.0.0.1", server.server_port), timeout=10) as slow:
        slow.sendall(b"GET /runs HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # never finishes its headers
        conn = http.client.HTTPConnection("127.0.0.1", server.server_port, timeout=5)
        conn.request("GET", "/static/app.css")
        assert conn.getresponse().status == 200
        conn.close()
        started = time.monotonic()
        assert slow.recv(65536) == b""  # closed by the server
        assert time.monotonic() - started < 8


def login(server: DashboardServer, next_value: str) -> tuple[int, dict[str, str]]:
    conn = http.client.HTTPConnection("127.0.0.1", server.server_port, timeout=20)
    body = f"token={TOKEN}"
    conn.putrequest("POST", f"/login?next={next_value}")
    conn.putheader("Content-Type", "application/x-www-form-urlencoded")
    conn.putheader("Content-Length", str(len(body)))
    conn.endheaders(body.encode())
    response = conn.getresponse()
    response.read()
    headers: dict[str, str] = {}
    for name, value in response.getheaders():
        headers[name.lower()] = headers.get(name.lower(), "") + ("\n" if name.lower() in headers else "") + value
    conn.close()
    return response.status, headers


def test_login_next_cannot_inject_headers_or_leave_the_site(server: DashboardServer) -> None:
    for hostile in ("/x%0d%0aSet-Cookie:%20evil=1", "/%5Cevil.com", "/%09/evil.com", "//evil.com",
                    "https://evil.com", "/%0a/evil.com", "/x%00y"):
        status, headers = login(server, hostile)
        assert status == 303 and headers["location"] == "/", (hostile, headers)
        assert "evil" not in headers["set-cookie"]
    assert login(server, "/runs%3Fstatus%3Dfailed")[1]["location"] == "/runs?status=failed"
    # beyond latin-1 (a header could not hold it): percent-encoded again, never a 500
    assert login(server, "/caf%C3%A9/%E4%B8%AD")[1]["location"] == "/caf%C3%A9/%E4%B8%AD"
    for target in ("/ok", "/runs?x=1"):
        assert _local(target) == target
    for target in ("/\\evil.com", "/\t/evil.com", "/a\r\nX: y", "//x", "x", "/\x7f"):
        assert _local(target) == "/", target


def test_the_login_cookie_is_secure_expires_and_logs_out(server: DashboardServer) -> None:
    status, headers = login(server, "/workers")
    cookie = headers["set-cookie"]
    assert status == 303 and "Secure" in cookie and "HttpOnly" in cookie and "Max-Age=43200" in cookie
    session = cookie.split(";")[0]
    conn = http.client.HTTPConnection("127.0.0.1", server.server_port, timeout=20)
    conn.request("GET", "/workers", headers={"Cookie": session})
    assert conn.getresponse().status == 200
    conn.close()
    # the expiry is signed into the value: a past one is refused, and so is one edited to the future
    auth: Auth = server.dash.auth
    value = session.partition("=")[2]
    assert auth.session_ok(value) and not auth.session_ok(value, now=time.time() + 43201)
    expires, _, signature = value.partition(".")
    assert not auth.session_ok(f"{int(expires) + 10**6}.{signature}")
    # logout: POST with the CSRF token; the browser is told to drop the cookie
    conn = http.client.HTTPConnection("127.0.0.1", server.server_port, timeout=20)
    body = f"csrf={auth.csrf}"
    conn.request("POST", "/logout", body=body, headers={"Cookie": session, "Content-Type":
                                                          "application/x-www-form-urlencoded"})
    response = conn.getresponse()
    response.read()
    conn.close()
    assert response.status == 303 and response.getheader("Location") == "/login"
    assert "Max-Age=0" in (response.getheader("Set-Cookie") or "")
    assert not Auth(TOKEN).secure_cookie and "Secure" not in Auth(TOKEN).session_cookie()


def get(server: DashboardServer, path: str) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", server.server_port, timeout=20)
    conn.request("GET", path, headers={"Authorization": f"Bearer {TOKEN}"})
    response = conn.getresponse()
    text = response.read().decode()
    conn.close()
    return response.status, text


def test_filter_values_that_answered_500_answer_400(server: DashboardServer) -> None:
    for query, message in (("since=99999999d", "before the year 1"), ("before=99999999999999999999", "not a run id"),
                           ("task=a%00b", "NUL character"), ("before=%D9%A3", "not a run id")):
        status, html = get(server, f"/runs?{query}")
        assert status == 400 and message in html, (query, status)
    assert get(server, "/runs?metadata=a%3D1e999999")[0] == 200  # matched as the text 1e999999


def test_a_run_with_a_too_deep_input_is_shown(server: DashboardServer, dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        (run_id,) = conn.execute(
            """INSERT INTO pgqueue.runs (task, queue, priority, input, run_at, status, error)
               VALUES ('summarize', 'default', 0,
                       (repeat('{"a":', 5000) || '1' || repeat('}', 5000))::jsonb, now(), 'failed',
                       '{"type": "InvalidInput", "message": "too deep"}')
               RETURNING id""").fetchone()  # type: ignore[misc]
    status, html = get(server, f"/runs/{run_id}")
    assert status == 200 and "over the limit of 64 levels" in html
    assert get(server, "/runs")[0] == 200
