"""HTTP for the dashboard: the standard library's threading server (the default way to serve it).

What a request gets is decided in `routes.py`; this module only reads requests off the socket
and writes the answers (`asgi.py` does the same for ASGI servers).
"""

from __future__ import annotations

import logging
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from .pages import Dashboard
from .routes import BadRequest, Request, Response, content_length, environment, respond
from .sse import sync_events

log = logging.getLogger("pgqueue.dashboard")
#: seconds a client may take to send a request (or stay idle between two): a slow client must
#: not hold one of the server's threads for ever
REQUEST_TIMEOUT = 30.0


class DashboardServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], dash: Dashboard, timeout: float = REQUEST_TIMEOUT) -> None:
        super().__init__(address, Handler)
        self.dash = dash
        self.env = environment(dash)
        self.request_timeout = timeout


class Handler(BaseHTTPRequestHandler):
    server: DashboardServer
    server_version = "pgqueue-dashboard"

    def setup(self) -> None:
        super().setup()
        # a read that waits longer ends the connection (handle_one_request treats the socket's
        # timeout as a closed connection), so a slow client cannot hold this thread for ever
        self.connection.settimeout(self.server.request_timeout)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def do_GET(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        self._answer()

    def _answer(self) -> None:
        url = urlsplit(self.path)
        headers = {name.lower(): value for name, value in self.headers.items()}
        request = Request(self.command, url.path, url.query, headers, self._read_body)
        self._send(respond(self.server.dash, self.server.env, request))

    def _read_body(self) -> bytes:
        """The request's body, its length checked before anything is read."""
        if self.headers.get("Transfer-Encoding"):
            raise BadRequest(411, "send the form with a Content-Length, not a Transfer-Encoding")
        length = content_length(self.headers.get_all("Content-Length") or [])
        try:
            body = self.rfile.read(length)
        except TimeoutError:  # a Content-Length larger than what the client sends
            raise BadRequest(408, f"the form's {length} bytes did not arrive within "
                                  f"{self.server.request_timeout:g} s") from None
        if len(body) < length:
            raise BadRequest(400, f"the connection closed after {len(body)} of the form's {length} bytes")
        return body

    def _send(self, response: Response) -> None:
        if response.close:
            self.close_connection = True  # the body, if any, was not read
        self.send_response(response.status)
        for name, value in response.all_headers():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(response.body)
        if response.events is not None and self.command != "HEAD":
            self._send_events(response)

    def _send_events(self, response: Response) -> None:
        """Write the events as they come, until the stream ends or the client goes away."""
        assert response.events is not None
        events = sync_events(self.server.dash.app.db, response.events)
        try:
            for data in events:
                self.wfile.write(data)
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            log.debug("%s left the stream of run %d", self.address_string(), response.events.run_id)
        finally:
            events.close()  # ends the listening connection now, not at garbage collection


def make_server(dash: Dashboard, host: str, port: int, timeout: float = REQUEST_TIMEOUT) -> DashboardServer:
    return DashboardServer((host, port), dash, timeout)
