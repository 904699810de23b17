"""HTTP for the dashboard: the standard library's threading server, Jinja2 pages, static files."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

import jinja2
import psycopg

from ..errors import DatabaseUnavailable, PgQueueError, RunNotFound
from ..metrics import Metrics, gauges_op
from ..retention import format_age
from . import pages
from .actions import cron_action, queue_action, run_action
from .pages import Dashboard

log = logging.getLogger("pgqueue.dashboard")
HERE = Path(__file__).resolve().parent
STATIC_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8"}
MAX_FORM = 256 * 1024
#: seconds a client may take to send a request (or stay idle between two): a slow client must
#: not hold one of the server's threads for ever
REQUEST_TIMEOUT = 30.0
_RUN = re.compile(r"^/runs/(\d+)$")
_RUN_ACTION = re.compile(r"^/runs/(\d+)/(\w+)$")
_NAMED_ACTION = re.compile(r"^/(queues|cron)/([^/]+)/(\w+)$")
NAV = (("/", "Overview"), ("/runs", "Runs"), ("/workers", "Workers"), ("/cron", "Cron"), ("/limits", "Limits"))


def environment(dash: Dashboard) -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined)
    env.globals.update(nav=NAV, csrf=dash.auth.csrf, with_token=dash.auth.token is not None)
    env.filters.update(when=_when, seconds=_seconds, took=_took, age=format_age)
    # macros as a global (not an {% import %}): a live block rendered alone still sees them
    env.globals["m"] = env.get_template("_macros.html").module
    return env


def _when(value: datetime | None) -> str:
    return "-" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f} s" if value < 120 else f"{value / 60:.1f} min" if value < 7200 else f"{value / 3600:.1f} h"


def _took(start: datetime | None, end: datetime | None) -> str:
    return "-" if start is None or end is None else f"{(end - start).total_seconds():.3f} s"


class BadRequest(Exception):
    """A request refused before its body is read (the connection is closed after the answer)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


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
        self._guarded(self._get)

    def do_POST(self) -> None:
        self._guarded(self._post)

    # -- plumbing ---------------------------------------------------------------------------

    def _guarded(self, handler: Callable[[str, dict[str, str]], None]) -> None:
        url = urlsplit(self.path)
        query = dict(parse_qsl(url.query))
        try:
            if not self.server.dash.auth.host_ok(self._headers()):
                return self._send(403, "this dashboard answers only to a loopback address such as 127.0.0.1 "
                                       "(or give it a --token)\n", "text/plain; charset=utf-8")
            if url.path.startswith("/static/"):
                return self._static(url.path.removeprefix("/static/"))
            if url.path == "/login":
                return self._login(query)
            if url.path == "/logout":
                return self._logout()
            if not self.server.dash.auth.allowed(self._headers()):
                if self.command == "GET" and "text/html" in self.headers.get("Accept", ""):
                    return self._redirect("/login?" + urlencode({"next": self.path}))
                return self._send(401, "a token is required: Authorization: Bearer <token>, or log in at /login\n",
                                  "text/plain; charset=utf-8")
            handler(url.path, query)
        except BadRequest as exc:
            self.close_connection = True  # the body, if any, was not read
            self._send(exc.status, f"{exc}\n", "text/plain; charset=utf-8", {"Connection": "close"})
        except RunNotFound as exc:
            self._error(404, str(exc))
        except (DatabaseUnavailable, psycopg.OperationalError) as exc:
            self._error(503, f"the database is unavailable: {exc}")
        except PgQueueError as exc:
            self._error(409, str(exc))
        except Exception:
            log.exception("dashboard request %s %s failed", self.command, self.path)
            self._error(500, "the dashboard failed on this request; its log has the details")

    def _send(self, status: int, body: str | bytes, content_type: str = "text/html; charset=utf-8",
              headers: Mapping[str, str] | None = None) -> None:
        payload = body.encode() if isinstance(body, str) else body
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("X-Frame-Options", "DENY")
        self.send_header("Content-Security-Policy", "default-src 'self'; style-src 'self'; img-src 'self' data:")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _redirect(self, location: str, headers: Mapping[str, str] | None = None) -> None:
        self._send(303, "", headers={"Location": location, **(headers or {})})

    def _render(self, status: int, template: str, context: dict[str, Any]) -> None:
        tmpl = self.server.env.get_template(template)
        context = {"path": urlsplit(self.path).path, "done": dict(parse_qsl(urlsplit(self.path).query)).get("done"),
                   **context}
        if self.headers.get("X-Fragment") == "live" and "live" in tmpl.blocks:
            # live updates swap only the page's live block in (static/app.js)
            html = "".join(tmpl.blocks["live"](tmpl.new_context(context)))
        else:
            html = tmpl.render(context)
        self._send(status, html)

    def _error(self, status: int, message: str) -> None:
        self._render(status, "error.html", {"status": status, "reason": HTTPStatus(status).phrase, "message": message})

    def _static(self, name: str) -> None:
        path = (HERE / "static" / name).resolve()
        if path.parent != (HERE / "static").resolve() or not path.is_file() or path.suffix not in STATIC_TYPES:
            return self._send(404, "not found\n", "text/plain; charset=utf-8")
        self._send(200, path.read_bytes(), STATIC_TYPES[path.suffix])

    def _headers(self) -> dict[str, str]:
        return {name.lower(): value for name, value in self.headers.items()}

    def _form(self) -> dict[str, str]:
        """The request's form, its length checked before anything is read."""
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
        try:
            return dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True, max_num_fields=1000))
        except ValueError as exc:  # over max_num_fields
            raise BadRequest(413, f"the form is too large ({exc})") from None

    # -- routes -----------------------------------------------------------------------------

    def _login(self, query: dict[str, str]) -> None:
        auth = self.server.dash.auth
        target = _local(query.get("next", "/"))
        if self.command == "POST":
            if auth.login(self._form().get("token", "")):
                return self._redirect(target, {"Set-Cookie": auth.session_cookie()})
            return self._render(401, "login.html", {"next": target, "failed": True})
        self._render(200, "login.html", {"next": target, "failed": False})

    def _logout(self) -> None:
        """POST /logout (with the pages' CSRF token): the browser drops the login cookie."""
        if self.command != "POST":
            return self._send(405, "log out with POST /logout\n", "text/plain; charset=utf-8", {"Allow": "POST"})
        if not self.server.dash.auth.csrf_ok(self._form().get("csrf", ""), self._headers()):
            return self._error(403, "this form is stale or came from another site: reload the page and try again")
        self._redirect("/login", {"Set-Cookie": self.server.dash.auth.logout_cookie()})

    def _get(self, path: str, query: dict[str, str]) -> None:
        dash = self.server.dash
        if path == "/metrics":
            text = Metrics().render(dash.app.db.execute(gauges_op()))
            return self._send(200, text, "text/plain; version=0.0.4; charset=utf-8")
        run = _RUN.match(path)
        if run:
            return self._render(*pages.run_detail(dash, int(run[1])))
        page = pages.PAGES.get(path.rstrip("/") or "/")
        if page is None:
            return self._error(404, f"no page at {path}")
        self._render(*page(dash, query))

    def _post(self, path: str, query: dict[str, str]) -> None:
        dash = self.server.dash
        form = self._form()
        if not dash.auth.csrf_ok(form.get("csrf", ""), self._headers()):
            return self._error(403, "this form is stale or came from another site: reload the page and try again")
        run = _RUN_ACTION.match(path)
        named = _NAMED_ACTION.match(path)
        if run:
            done = run_action(dash, int(run[1]), run[2], form)
        elif path == "/queues/pause":  # the Limits page's form, when JavaScript did not name the queue in the URL
            done = queue_action(dash, form.get("queue", "").strip(), "pause")
        elif named and named[1] == "queues":
            done = queue_action(dash, unquote(named[2]), named[3])
        elif named:
            done = cron_action(dash, unquote(named[2]), named[3])
        else:
            return self._error(404, f"no action at {path}")
        back = _local(form.get("back") or "/")
        self._redirect(back.split("?")[0] + "?" + urlencode({"done": done}))


_ASCII_PRINTABLE = "".join(chr(c) for c in range(0x21, 0x7F))


def content_length(values: list[str]) -> int:
    """The body's length from the Content-Length header(s): 0 when absent; BadRequest for a value
    that is not one plain non-negative integer (a negative one once made the server read until
    the client stopped) or that is over MAX_FORM."""
    if not values:
        return 0
    if len(set(values)) != 1 or not values[0].strip().isascii() or not values[0].strip().isdigit():
        raise BadRequest(400, f"Content-Length must be one non-negative integer, not {', '.join(values)[:40]!r}")
    length = int(values[0].strip())
    if length > MAX_FORM:
        raise BadRequest(413, f"the form is too large ({length} bytes; at most {MAX_FORM})")
    return length


def _local(target: str) -> str:
    """Only paths of this server: no scheme or host (//host, /\\host, a tab or newline that
    browsers drop), no control character that could end a header. Anything else: "/"."""
    if (not target.startswith("/") or target.startswith("//") or "\\" in target
            or any(ord(c) < 0x20 or ord(c) == 0x7F for c in target)):
        return "/"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return "/"
    # a header holds only latin-1: anything beyond ASCII goes percent-encoded (as the browser sent it)
    return target if target.isascii() else quote(target, safe=_ASCII_PRINTABLE)


def make_server(dash: Dashboard, host: str, port: int, timeout: float = REQUEST_TIMEOUT) -> DashboardServer:
    return DashboardServer((host, port), dash, timeout)
