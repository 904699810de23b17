"""Who may use the dashboard: loopback by default, a token for anything else, CSRF for actions."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Mapping
from http.cookies import CookieError, SimpleCookie
from urllib.parse import urlsplit

from ..metrics import bearer_ok, check_binding, loopback_host

COOKIE = "pgqueue_dashboard"
#: seconds a login lasts (the cookie's Max-Age, and the expiry signed into its value)
SESSION_SECONDS = 12 * 3600
TOKEN_OPTION = "--token (or PGQUEUE_DASHBOARD_TOKEN)"


def check_dashboard_binding(host: str, token: str | None) -> None:
    """Refuse a non-loopback address without a token (same rule as the metrics endpoint)."""
    check_binding(host, token, what="the dashboard", option=TOKEN_OPTION)


class Auth:
    """With a token, every request must carry it: `Authorization: Bearer <token>`, or the HttpOnly
    cookie set by the login form. The cookie holds its expiry and an HMAC of it keyed by the token
    (never the token itself): it stops working after `session_seconds`, or when the token changes.
    `secure_cookie` adds the Secure attribute, for a dashboard served behind TLS.

    Actions (POST) must also carry the CSRF token embedded in the pages' forms, and when the
    browser sends an Origin it must be this server's own. The CSRF token is random per process,
    or derived from `csrf_secret` so that several processes serving the same dashboard accept
    each other's forms.

    `delegated`: the application the dashboard is mounted in decides who may use it (its own
    check ran before the request got here); then no token is asked and any Host is answered.
    """

    def __init__(self, token: str | None, secure_cookie: bool = False,
                 session_seconds: int = SESSION_SECONDS, *, csrf_secret: str | None = None,
                 delegated: bool = False) -> None:
        self.token = token or None
        self.csrf = (secrets.token_urlsafe(32) if not csrf_secret else
                     hmac.new(csrf_secret.encode(), b"pgqueue-dashboard-csrf", hashlib.sha256).hexdigest())
        self.secure_cookie = secure_cookie
        self.session_seconds = session_seconds
        self.delegated = delegated

    def _signature(self, expires: int) -> str:
        assert self.token is not None
        return hmac.new(self.token.encode(), f"pgqueue-dashboard-session:{expires}".encode(),
                        hashlib.sha256).hexdigest()

    def session_ok(self, value: str, now: float | None = None) -> bool:
        if self.token is None:
            return False
        expires, _, signature = value.partition(".")
        if not expires.isdigit() or len(expires) > 12 or int(expires) <= (time.time() if now is None else now):
            return False
        return hmac.compare_digest(signature.encode(), self._signature(int(expires)).encode())

    def allowed(self, headers: Mapping[str, str]) -> bool:
        """`headers`: the request's headers with lower-case names."""
        if self.token is None:
            return True
        if bearer_ok(headers.get("authorization"), self.token):
            return True
        return self.session_ok(_cookie(headers.get("cookie")))

    def host_ok(self, headers: Mapping[str, str]) -> bool:
        """Without a token, only loopback names may be in the Host header: a page on another site
        whose name an attacker re-pointed at 127.0.0.1 (DNS rebinding) is refused."""
        return self.token is not None or self.delegated or loopback_host(headers.get("host"))

    def login(self, submitted: str) -> bool:
        return self.token is not None and hmac.compare_digest(submitted.encode(), self.token.encode())

    def session_cookie(self, now: float | None = None, path: str = "/") -> str:
        """`path`: where the dashboard is served ("/pgqueue/" when mounted there)."""
        expires = int(time.time() if now is None else now) + self.session_seconds
        return self._cookie(f"{expires}.{self._signature(expires)}", self.session_seconds, path)

    def logout_cookie(self, path: str = "/") -> str:
        return self._cookie("", 0, path)

    def _cookie(self, value: str, max_age: int, path: str) -> str:
        secure = "; Secure" if self.secure_cookie else ""
        return f"{COOKIE}={value}; Max-Age={max_age}; HttpOnly; SameSite=Strict; Path={path}{secure}"

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
