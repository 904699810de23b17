"""What the dashboard answers to a request, whatever server carries it.

A `Request` (method, path inside the dashboard, headers, the body once read) goes in, a `Response`
comes out: the standard library's server (`server.py`) and the ASGI adapter (`asgi.py`) only
translate from and to their transport, so that the pages, the checks of every request (Host,
token, CSRF) and the security headers exist once. `root` is the path the dashboard is served
under ("" standalone, "/pgqueue" when mounted in another application); every link, form and
redirect starts with it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
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
from .sse import CONTENT_TYPE as SSE_TYPE
from .sse import EventStream, first_offset

log = logging.getLogger("pgqueue.dashboard")
HERE = Path(__file__).resolve().parent
STATIC_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8"}
TEXT = "text/plain; charset=utf-8"
MAX_FORM = 256 * 1024
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'self'; style-src 'self'; img-src 'self' data:",
}
_RUN = re.compile(r"^/runs/(\d+)$")
_RUN_STREAM = re.compile(r"^/runs/(\d+)/stream$")
_RUN_ACTION = re.compile(r"^/runs/(\d+)/(\w+)$")
_NAMED_ACTION = re.compile(r"^/(queues|cron)/([^/]+)/(\w+)$")
NAV = (("/", "Overview"), ("/runs", "Runs"), ("/workers", "Workers"), ("/cron", "Cron"), ("/limits", "Limits"),
       ("/usage", "Usage"))


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


@dataclass
class Request:
    method: str
    #: the path inside the dashboard ("/runs/5"), without `root`
    path: str
    query_string: str
    #: header names in lower case
    headers: Mapping[str, str]
    #: the body; called only for forms, after the request passed the checks (may raise BadRequest)
    read_body: Callable[[], bytes]
    #: the path the dashboard is served under: "" standalone, "/pgqueue" mounted there
    root: str = ""

    @property
    def query(self) -> dict[str, str]:
        return dict(parse_qsl(self.query_string))

    @property
    def target(self) -> str:
        """The request's path and query as the browser sees them (with `root`)."""
        return self.root + self.path + (f"?{self.query_string}" if self.query_string else "")


@dataclass
class Response:
    status: int
    body: bytes
    content_type: str = "text/html; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)
    #: close the connection after it (the request's body, if any, was not read)
    close: bool = False
    #: Server-Sent Events of a run's stream follow `body` (the server writes them, see sse.py)
    events: EventStream | None = None

    def all_headers(self) -> list[tuple[str, str]]:
        length = [] if self.events is not None else [("Content-Length", str(len(self.body)))]
        return [("Content-Type", self.content_type), *length, *SECURITY_HEADERS.items(), *self.headers.items()]


def text(status: int, message: str, headers: Mapping[str, str] | None = None) -> Response:
    return Response(status, message.encode(), TEXT, dict(headers or {}))


def respond(dash: Dashboard, env: jinja2.Environment, request: Request) -> Response:
    """The answer to one request; every failure becomes an error page, never an exception."""
    return _Exchange(dash, env, request).answer()


class _Exchange:
    """One request being answered (the routes, with what they share: rendering and redirects)."""

    def __init__(self, dash: Dashboard, env: jinja2.Environment, request: Request) -> None:
        self.dash, self.env, self.request = dash, env, request
        self.root = request.root

    def answer(self) -> Response:
        request, auth = self.request, self.dash.auth
        try:
            if not auth.host_ok(request.headers):
                return text(403, "this dashboard answers only to a loopback address such as 127.0.0.1 "
                                 "(or give it a --token)\n")
            if request.path.startswith("/static/"):
                return self._static(request.path.removeprefix("/static/"))
            if request.path == "/login":
                return self._login()
            if request.path == "/logout":
                return self._logout()
            if not auth.allowed(request.headers):
                if request.method == "GET" and "text/html" in request.headers.get("accept", ""):
                    return self._redirect(self.root + "/login?" + urlencode({"next": request.target}))
                return text(401, "a token is required: Authorization: Bearer <token>, or log in at /login\n")
            if request.method == "GET":
                return self._get()
            if request.method == "POST":
                return self._post()
            return text(405, "the dashboard answers GET and POST\n", {"Allow": "GET, POST"})
        except BadRequest as exc:
            return Response(exc.status, f"{exc}\n".encode(), TEXT, {"Connection": "close"}, close=True)
        except RunNotFound as exc:
            return self._error(404, str(exc))
        except (DatabaseUnavailable, psycopg.OperationalError) as exc:
            return self._error(503, f"the database is unavailable: {exc}")
        except PgQueueError as exc:
            return self._error(409, str(exc))
        except Exception:
            log.exception("dashboard request %s %s failed", request.method, request.target)
            return self._error(500, "the dashboard failed on this request; its log has the details")

    # -- what the routes share ------------------------------------------------------------------

    def _redirect(self, location: str, headers: Mapping[str, str] | None = None) -> Response:
        """`location`: a path as the browser sees it (starting with the root)."""
        return Response(303, b"", headers={"Location": location, **(headers or {})})

    def _render(self, status: int, template: str, context: dict[str, Any]) -> Response:
        tmpl = self.env.get_template(template)
        context = {"path": self.request.path, "root": self.root, "done": self.request.query.get("done"),
                   **context}
        if self.request.headers.get("x-fragment") == "live" and "live" in tmpl.blocks:
            # live updates swap only the page's live block in (static/app.js)
            html = "".join(tmpl.blocks["live"](tmpl.new_context(context)))
        else:
            html = tmpl.render(context)
        return Response(status, html.encode())

    def _error(self, status: int, message: str) -> Response:
        return self._render(status, "error.html",
                            {"status": status, "reason": HTTPStatus(status).phrase, "message": message})

    def _static(self, name: str) -> Response:
        path = (HERE / "static" / name).resolve()
        if path.parent != (HERE / "static").resolve() or not path.is_file() or path.suffix not in STATIC_TYPES:
            return text(404, "not found\n")
        return Response(200, path.read_bytes(), STATIC_TYPES[path.suffix])

    def _form(self) -> dict[str, str]:
        body = self.request.read_body()
        try:
            return dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True, max_num_fields=1000))
        except ValueError as exc:  # over max_num_fields
            raise BadRequest(413, f"the form is too large ({exc})") from None

    def _local(self, target: str) -> str:
        return local_path(target, self.root)

    # -- routes ---------------------------------------------------------------------------------

    def _login(self) -> Response:
        auth = self.dash.auth
        target = self._local(self.request.query.get("next", self.root + "/"))
        if auth.token is None:  # nothing to log in to: the application in front decides who comes in
            return self._redirect(target)
        if self.request.method == "POST":
            if auth.login(self._form().get("token", "")):
                return self._redirect(target, {"Set-Cookie": auth.session_cookie(path=self.root + "/")})
            return self._render(401, "login.html", {"next": target, "failed": True})
        return self._render(200, "login.html", {"next": target, "failed": False})

    def _logout(self) -> Response:
        """POST /logout (with the pages' CSRF token): the browser drops the login cookie."""
        if self.request.method != "POST":
            return text(405, "log out with POST /logout\n", {"Allow": "POST"})
        if not self.dash.auth.csrf_ok(self._form().get("csrf", ""), self.request.headers):
            return self._error(403, "this form is stale or came from another site: reload the page and try again")
        return self._redirect(self.root + "/login", {"Set-Cookie": self.dash.auth.logout_cookie(path=self.root + "/")})

    def _get(self) -> Response:
        dash, path = self.dash, self.request.path
        if path == "/metrics":
            body = Metrics().render(dash.app.db.execute(gauges_op()))
            return Response(200, body.encode(), "text/plain; version=0.0.4; charset=utf-8")
        run = _RUN.match(path)
        if run:
            return self._render(*pages.run_detail(dash, int(run[1])))
        stream = _RUN_STREAM.match(path)
        if stream:
            return self._events(int(stream[1]))
        page = pages.PAGES.get(path.rstrip("/") or "/")
        if page is None:
            return self._error(404, f"no page at {path}")
        return self._render(*page(dash, self.request.query))

    def _events(self, run_id: int) -> Response:
        try:
            offset = first_offset(self.request.query, self.request.headers)
        except ValueError as exc:
            return text(400, f"{exc}\n")
        pages.stream_state(self.dash, run_id)  # an unknown run: 404 now, not an empty stream
        return Response(200, b"", SSE_TYPE, {"X-Accel-Buffering": "no"}, close=True,
                        events=EventStream(run_id, offset))

    def _post(self) -> Response:
        dash, path = self.dash, self.request.path
        form = self._form()
        if not dash.auth.csrf_ok(form.get("csrf", ""), self.request.headers):
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
        back = self._local(form.get("back") or self.root + "/")
        return self._redirect(back.split("?")[0] + "?" + urlencode({"done": done}))


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


def local_path(target: str, root: str = "") -> str:
    """Only paths of this server: no scheme or host (//host, /\\host, a tab or newline that
    browsers drop), no control character that could end a header, and under `root` when the
    dashboard is mounted in another application. Anything else: the dashboard's front page."""
    home = root + "/"
    if (not target.startswith("/") or target.startswith("//") or "\\" in target
            or any(ord(c) < 0x20 or ord(c) == 0x7F for c in target)):
        return home
    if root and not (target == root or target.startswith((root + "/", root + "?"))):
        return home
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return home
    # a header holds only latin-1: anything beyond ASCII goes percent-encoded (as the browser sent it)
    return target if target.isascii() else quote(target, safe=_ASCII_PRINTABLE)
