"""The dashboard as an ASGI application, to mount in FastAPI, Starlette or any ASGI server.

The pages are those of `routes.py`, the same as the standard library's server answers; this
module only carries requests and answers over ASGI. The pages read the database through the
app's sync pool, so each request is answered in a thread of the adapter's own pool (never the
event loop's default executor), and the body of a form is read from the event loop only when
the route asks for it (after the request has passed the checks).

Who may use it is decided before any page runs (see `create_asgi_app`): the host application's
`authorize` check, or the dashboard's own token; actions (POST) always need the CSRF token of
the pages' forms.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .pages import Dashboard
from .routes import MAX_FORM, BadRequest, Request, Response, content_length, environment, respond, text
from .sse import async_events

log = logging.getLogger("pgqueue.dashboard")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
#: the host application's check: given the request's ASGI scope, whether it may use the
#: dashboard (it may also raise its framework's own error, e.g. FastAPI's HTTPException(401))
Authorize = Callable[[Scope], bool | Awaitable[bool]]
#: seconds a client may take to send a form's body
BODY_TIMEOUT = 30.0
#: hop-by-hop headers are the ASGI server's business
_HOP_BY_HOP = {"connection"}


class DashboardASGI:
    """An ASGI application serving the dashboard of `dash` (build it with `create_asgi_app`)."""

    def __init__(self, dash: Dashboard, authorize: Authorize | None = None, threads: int = 4) -> None:
        self.dash = dash
        self.env = environment(dash)
        self.authorize = authorize
        self._threads_count = threads
        self._threads: ThreadPoolExecutor | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":  # served alone (uvicorn module:dashboard); a Mount never forwards it
            return await self._lifespan(receive, send)
        if scope["type"] != "http":
            if scope["type"] == "websocket":
                await receive()
                await send({"type": "websocket.close", "code": 1003})
            return
        if self.authorize is not None:
            allowed = self.authorize(scope)
            if inspect.isawaitable(allowed):
                allowed = await allowed
            if not allowed:
                return await _send(send, text(403, "not allowed: this application's own check refused the request\n"))
        loop = asyncio.get_running_loop()
        headers = _headers(scope)

        def read_body() -> bytes:  # called from the page's thread: the reading happens on the loop
            future = asyncio.run_coroutine_threadsafe(_read_body(scope, receive), loop)
            try:
                return future.result(BODY_TIMEOUT)
            except TimeoutError:
                future.cancel()
                raise BadRequest(408, f"the form did not arrive within {BODY_TIMEOUT:g} s") from None

        root = scope.get("root_path", "")
        request = Request(scope["method"], route_path(scope), scope.get("query_string", b"").decode("latin-1"),
                          headers, read_body, root)
        response = await loop.run_in_executor(self._pool(), respond, self.dash, self.env, request)
        if response.events is not None and scope["method"] != "HEAD":
            return await self._send_events(response, receive, send)
        await _send(send, response)

    async def _send_events(self, response: Response, receive: Receive, send: Send) -> None:
        """Send the events from the event loop (holding no page thread) until the stream ends
        or the client disconnects."""
        stream = response.events
        assert stream is not None
        await _send(send, response, more=True)

        async def relay() -> None:
            async for data in async_events(self.dash.app.db, stream):
                await send({"type": "http.response.body", "body": data, "more_body": True})

        async def disconnected() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass

        relaying, leaving = asyncio.ensure_future(relay()), asyncio.ensure_future(disconnected())
        try:
            await asyncio.wait([relaying, leaving], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (relaying, leaving):
                task.cancel()
            await asyncio.gather(relaying, leaving, return_exceptions=True)
        if relaying.done() and not relaying.cancelled() and relaying.exception() is not None:
            log.warning("stream of run %d ended with an error: %s", stream.run_id, relaying.exception())
        if not leaving.done() or leaving.cancelled():
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    def _pool(self) -> ThreadPoolExecutor:
        if self._threads is None:
            self._threads = ThreadPoolExecutor(self._threads_count, thread_name_prefix="pgqueue-dashboard")
        return self._threads

    def close(self) -> None:
        """Stop the adapter's threads (the app's pools are the app's: close them with it)."""
        if self._threads is not None:
            self._threads.shutdown(wait=False, cancel_futures=True)
            self._threads = None

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:  # a wrong DSN or a missing schema fails the start, not the first page
                    await asyncio.get_running_loop().run_in_executor(self._pool(), self.dash.app.db.pool)
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.close()
                self.dash.app.close()
                await send({"type": "lifespan.shutdown.complete"})
                return


def route_path(scope: Scope) -> str:
    """The path inside the dashboard. Servers and frameworks differ on whether `path` still holds
    `root_path` (Starlette's Mount keeps it, as the ASGI spec now says; older ones strip it)."""
    path, root = scope.get("path") or "/", scope.get("root_path", "")
    if root and (path == root or path.startswith(root + "/")):
        path = path[len(root):]
    return path or "/"


def _headers(scope: Scope) -> dict[str, str]:
    headers: dict[str, str] = {}
    for raw_name, raw_value in scope.get("headers", ()):
        name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
        if name in headers:  # repeated: joined as HTTP allows (a repeated token then matches nothing)
            value = headers[name] + ("; " if name == "cookie" else ", ") + value
        headers[name] = value
    return headers


async def _read_body(scope: Scope, receive: Receive) -> bytes:
    """The request's body, refused as soon as it is known to be over MAX_FORM."""
    content_length([value.decode("latin-1") for name, value in scope.get("headers", ())
                    if name.lower() == b"content-length"])
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise BadRequest(400, f"the connection closed after {size} bytes of the form")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_FORM:
            raise BadRequest(413, f"the form is too large (over {MAX_FORM} bytes)")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _send(send: Send, response: Response, more: bool = False) -> None:
    headers = [(name.lower().encode("latin-1"), value.encode("latin-1"))
               for name, value in response.all_headers() if name.lower() not in _HOP_BY_HOP]
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    await send({"type": "http.response.body", "body": response.body, "more_body": more})
