"""Who may use the studio: the token, the Host header, and the same-origin rule for every change.

* Bound to loopback (the default), any process of this machine's users can connect, as with a Jupyter
  server; the ``Host`` header must name a loopback address, so a web page on another site cannot reach
  the studio through a DNS name that resolves to 127.0.0.1 (DNS rebinding).
* Bound to any other address, a token is required on every request, pages, files and event streams
  alike: ``?token=`` once (it becomes an HttpOnly, SameSite=Strict cookie and leaves the address bar),
  then the cookie, or an ``X-Studio-Token`` header.
* Every request that changes something is a POST that carries the page's ``X-Studio-CSRF`` header
  (a browser sends a custom header cross-site only after a CORS pre-flight, which the studio never
  grants) and whose ``Origin`` (or ``Referer``) is the studio itself.
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import urlencode, urlsplit

from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response

TOKEN_COOKIE = "loraplug_studio_token"
SESSION_COOKIE = "loraplug_studio_session"
CSRF_HEADER = "x-studio-csrf"
TOKEN_HEADER = "x-studio-token"
SAFE_METHODS = frozenset({"GET", "HEAD"})


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Guard:
    #: Required on every request when set (always set when the studio listens beyond loopback).
    token: str | None
    #: The server's bind address; when loopback, only loopback Host headers are served.
    bind: str
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(24))

    def _host_ok(self, request: Request) -> bool:
        if not is_loopback(self.bind):
            return True  # the token guards it; the address people type is not ours to know
        host = request.headers.get("host", "")
        name = urlsplit(f"//{host}").hostname or ""
        return is_loopback(name)

    def _token_ok(self, request: Request) -> bool:
        if self.token is None:
            return True
        given = (
            request.headers.get(TOKEN_HEADER)
            or request.cookies.get(TOKEN_COOKIE)
            or request.query_params.get("token")
            or ""
        )
        return hmac.compare_digest(given.encode(), self.token.encode())

    def _same_origin(self, request: Request) -> bool:
        source = request.headers.get("origin") or request.headers.get("referer")
        if not source:
            return False
        return urlsplit(source).netloc == request.headers.get("host", "")

    async def __call__(
        self, request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        if not self._host_ok(request):
            return PlainTextResponse(
                "The studio answers only to a loopback address (127.0.0.1, localhost)", 421
            )
        if not self._token_ok(request):
            return PlainTextResponse(
                "This studio needs its access token: open the address `loraplug studio` printed (…?token=…)",
                401,
            )
        if request.method not in SAFE_METHODS:
            given = request.headers.get(CSRF_HEADER, "")
            if not hmac.compare_digest(given.encode(), self.csrf.encode()) or not self._same_origin(request):
                return PlainTextResponse("Refused: a change must come from the studio's own page", 403)
        if self.token is not None and "token" in request.query_params and request.method in SAFE_METHODS:
            # The token leaves the address bar (and history) for a cookie the page's scripts cannot read.
            rest = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
            response: Response = RedirectResponse(
                request.url.path + (f"?{urlencode(rest)}" if rest else ""), 303
            )
            response.set_cookie(TOKEN_COOKIE, self.token, httponly=True, samesite="strict")
        else:
            response = await call_next(request)
        if SESSION_COOKIE not in request.cookies:
            response.set_cookie(SESSION_COOKIE, secrets.token_urlsafe(16), httponly=True, samesite="strict")
        return response


def session_of(request: Request) -> str:
    return request.cookies.get(SESSION_COOKIE, "anonymous")
