"""Who may use the dashboard: loopback by default, a token for anything else, CSRF for actions."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
from collections.abc import Mapping
from http.cookies import CookieError, SimpleCookie
from urllib.parse import urlsplit

from ..metrics import bearer_ok, check_binding

COOKIE = "pgqueue_dashboard"
TOKEN_OPTION = "--token (or PGQUEUE_DASHBOARD_TOKEN)"


def check_dashboard_binding(host: str, token: str | None) -> None:
    """Refuse a non-loopback address without a token (same rule as the metrics endpoint)."""
    check_binding(host, token, what="the dashboard", option=TOKEN_OPTION)


class Auth:
    """With a token, every request must carry it: `Authorization: Bearer <token>`, or the HttpOnly
    cookie set by the login form (it holds an HMAC of the token, never the token itself).

    Actions (POST) must also carry the CSRF token embedded in the pages' forms, and when the
    browser sends an Origin it must be this server's own."""

    def __init__(self, token: str | None) -> None:
        self.token = token or None
        self.csrf = secrets.token_urlsafe(32)
        self.session = (hmac.new(self.token.encode(), b"pgqueue-dashboard-session", hashlib.sha256).hexdigest()
                        if self.token else "")

    def allowed(self, headers: Mapping[str, str]) -> bool:
        """`headers`: the request's headers with lower-case names."""
        if self.token is None:
            return True
        if bearer_ok(headers.get("authorization"), self.token):
            return True
        return hmac.compare_digest(_cookie(headers.get("cookie")).encode(), self.session.encode())

    def host_ok(self, headers: Mapping[str, str]) -> bool:
        """Without a token, only loopback names may be in the Host header: a page on another site
        whose name an attacker re-pointed at 127.0.0.1 (DNS rebinding) is refused."""
        if self.token is not None:
            return True
        name = urlsplit("//" + headers.get("host", "")).hostname or ""
        if name == "localhost":
            return True
        try:
            return ipaddress.ip_address(name).is_loopback
        except ValueError:
            return False

    def login(self, submitted: str) -> bool:
        return self.token is not None and hmac.compare_digest(submitted.encode(), self.token.encode())

    def session_cookie(self) -> str:
        return f"{COOKIE}={self.session}; HttpOnly; SameSite=Strict; Path=/"

    def csrf_ok(self, submitted: str, headers: Mapping[str, str]) -> bool:
        origin = headers.get("origin")
        if origin and origin != "null" and urlsplit(origin).netloc != headers.get("host", ""):
            return False
        return hmac.compare_digest(submitted.encode(), self.csrf.encode())


def _cookie(header: str | None) -> str:
    if not header:
        return ""
    try:
        morsel = SimpleCookie(header).get(COOKIE)
    except CookieError:
        return ""
    return morsel.value if morsel is not None else ""
