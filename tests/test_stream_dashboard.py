"""The dashboard's Server-Sent Events of a run's stream, over real HTTP (both servers), and the run page."""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from asgi_server import serving
from conftest import bind, running_worker
from pgqueue.dashboard import create_asgi_app, create_server
from pgqueue.dashboard.server import DashboardServer

pytestmark = pytest.mark.timeout(120)
TOKEN = "stream-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def streams(dsn: str) -> Iterator[Any]:
    import stream_app

    bind(stream_app.app, dsn)
    yield stream_app
    bind(stream_app.app, None)


@pytest.fixture
def server(dsn: str, streams: Any) -> Iterator[DashboardServer]:
    server = create_server(dsn, "127.0.0.1", 0, TOKEN)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.dash.app.close()


def parse_events(lines: Iterator[str]) -> Iterator[dict[str, str]]:
    """SSE events (fields of each) from the lines of a response; comments skipped."""
    event: dict[str, str] = {}
    for raw in lines:
        line = raw.rstrip("\r\n")
        if not line:
            if event:
                yield event
            event = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            event[name] = value.removeprefix(" ")


def sse(server: DashboardServer, path: str, headers: dict[str, str] | None = None
        ) -> tuple[int, dict[str, str], list[dict[str, str]]]:
    conn = http.client.HTTPConnection("127.0.0.1", server.server_port, timeout=60)
    conn.request("GET", path, headers={**AUTH, **(headers or {})})
    response = conn.getresponse()
    got = {k.lower(): v for k, v in response.getheaders()}
    lines = iter(lambda: response.readline().decode(), "")
    events = list(parse_events(lines))  # until the server closes the stream
    conn.close()
    return response.status, got, events


def chunks_of(events: list[dict[str, str]]) -> list[tuple[int, Any]]:
    return [(int(e["id"]), json.loads(e["data"])["data"]) for e in events if e.get("event") == "chunk"]


async def test_sse_follows_a_run_live_then_resumes_after_last_event_id(streams: Any, server: DashboardServer) -> None:
    handle = await streams.tokens.enqueue_async(n=30, pause=0.01)
    following = asyncio.create_task(asyncio.to_thread(sse, server, f"/runs/{handle.id}/stream"))
    async with running_worker(streams.app):
        assert await handle.result(timeout=30) == 30
        status, headers, events = await asyncio.wait_for(following, 60)
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    assert "content-length" not in headers and headers["cache-control"] == "no-store"
    assert events[0] == {"retry": "2000"}
    assert chunks_of(events) == [(i, f"t{i} ") for i in range(30)]
    progress = [json.loads(e["data"]) for e in events if e.get("event") == "progress"]
    assert progress and progress[-1] == {"done": 30.0, "total": 30.0, "message": "token 30 of 30", "attempt": 1}
    assert events[-1] == {"event": "end", "data": '{"status": "succeeded"}'}

    # a browser reconnecting sends the last id it got; ?offset= starts anywhere
    _, _, resumed = await asyncio.to_thread(sse, server, f"/runs/{handle.id}/stream", {"Last-Event-ID": "26"})
    assert chunks_of(resumed) == [(i, f"t{i} ") for i in range(27, 30)] and resumed[-1]["event"] == "end"
    _, _, offset = await asyncio.to_thread(sse, server, f"/runs/{handle.id}/stream?offset=29")
    assert chunks_of(offset) == [(29, "t29 ")]


def test_sse_bad_requests_get_clear_answers(streams: Any, server: DashboardServer) -> None:
    handle = streams.tokens.enqueue(n=1)
    conn = http.client.HTTPConnection("127.0.0.1", server.server_port, timeout=20)
    for path, headers, expected, fragment in [
        (f"/runs/{handle.id}/stream", {}, 401, "a token is required"),
        ("/runs/987654321/stream", AUTH, 404, "no run with id 987654321"),
        (f"/runs/{handle.id}/stream?offset=-3", AUTH, 400, "offset must be an integer of 0 or more"),
        (f"/runs/{handle.id}/stream", {**AUTH, "Last-Event-ID": "x"}, 400, "Last-Event-ID must be a chunk offset"),
    ]:
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        body = response.read().decode()
        assert (response.status, fragment in body) == (expected, True), (path, response.status, body)
    conn.close()


async def test_run_page_has_the_live_output(streams: Any, server: DashboardServer) -> None:
    handle = await streams.tokens.enqueue_async(n=3)
    async with running_worker(streams.app):
        await handle.result(timeout=30)

    def page() -> str:
        conn = http.client.HTTPConnection("127.0.0.1", server.server_port, timeout=20)
        conn.request("GET", f"/runs/{handle.id}", headers=AUTH)
        return conn.getresponse().read().decode()
    html = await asyncio.to_thread(page)
    assert f'data-stream="/runs/{handle.id}/stream"' in html and "3 chunk(s)" in html
    assert "token 3 of 3" in html  # the latest progress, in the run's facts


async def test_sse_over_asgi_from_the_event_loop(streams: Any, dsn: str) -> None:
    app = streams.app
    dashboard = create_asgi_app(app, token=TOKEN, threads=1)
    handle = await streams.tokens.enqueue_async(n=20, pause=0.01)
    async with serving(dashboard) as base, httpx.AsyncClient(base_url=base, timeout=60) as client:
        opened = asyncio.Event()

        async def follow() -> list[dict[str, str]]:
            async with client.stream("GET", f"/runs/{handle.id}/stream", headers=AUTH) as response:
                opened.set()
                assert response.status_code == 200
                assert response.headers["content-type"].startswith("text/event-stream")
                return list(parse_events(iter([line + "\n" async for line in response.aiter_lines()])))
        following = asyncio.create_task(follow())
        # with one page thread, a page still answers while a stream is open
        await asyncio.wait_for(opened.wait(), 30)
        assert (await client.get("/", headers=AUTH)).status_code == 200
        async with running_worker(app):
            assert await handle.result(timeout=30) == 20
            events = await asyncio.wait_for(following, 60)
    assert chunks_of(events) == [(i, f"t{i} ") for i in range(20)]
    assert events[-1]["event"] == "end"
    await app.aclose()
