"""Browser-facing guards that hold even without authentication (`GATEWAY_AUTH=none`).

A page on another site can make a browser send requests to a gateway on the user's loopback
address: a cross-site `POST` (CSRF), or, after pointing its own name at 127.0.0.1, any request
at all (DNS rebinding). Three checks close that, all before routing:

- `Host` must name this gateway: an IP literal (a browser that connects by address is on this
  gateway's own origin, and a rebound name is never an IP literal), `localhost`, the listen
  address, or an entry of `GATEWAY_ALLOWED_HOSTS`.
- A write (`POST`, `PUT`, `PATCH`, `DELETE`) whose `Origin` is another origin is refused unless
  that origin is in `GATEWAY_ALLOWED_ORIGINS`. So is every WebSocket handshake, reads included:
  browsers apply no CORS to WebSockets, so a foreign page could read a stream it opened
  (cross-site WebSocket hijacking).
- Request bodies must be JSON (or NDJSON where documented), which a cross-site form or a
  no-preflight `fetch` cannot send: handlers call `require_json`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket

from gateway.api.errors import ApiError, api_error, bad_request, refuse_websocket
from gateway.sessions.registry import TooManyConnections

WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
JSON_TYPES = ("application/json", "text/json")
BEFORE_UPGRADE = frozenset({"host_not_allowed", "origin_not_allowed"})
"""Refusals a WebSocket handshake gets as its HTTP error instead of the upgrade."""


def host_name(host: str) -> str:
    """The name part of a `Host` header value, lower case, without port, brackets or final dot."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    if host.count(":") == 1:
        host = host.split(":", 1)[0]
    return host.rstrip(".")


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def host_allowed(host: str | None, listen: str, allowed: tuple[str, ...]) -> bool:
    """Whether a request's `Host` names this gateway; an entry `.example.com` allows its subdomains,
    `*` allows any name."""
    if host is None:
        return True  # HTTP/1.0 without Host: no browser sends that
    name = host_name(host)
    if _is_ip(name) or name in ("localhost", listen.lower()) or "*" in allowed:
        return True
    for entry in allowed:
        entry = entry.lower().rstrip(".")
        if name == entry or (entry.startswith(".") and (name.endswith(entry) or name == entry[1:])):
            return True
    return False


def same_or_allowed_origin(origin: str | None, host: str | None, allowed: tuple[str, ...]) -> bool:
    """Whether a request from `origin` may act here: no Origin (not a browser, or same-origin
    GET), this gateway's own origin, or one listed in `GATEWAY_ALLOWED_ORIGINS`."""
    if origin is None or origin in allowed or "*" in allowed:
        return True
    netloc = urlsplit(origin).netloc if "://" in origin else ""
    return bool(netloc) and host is not None and netloc.lower() == host.strip().lower()


class RequestGuard:
    """ASGI middleware refusing, before routing: an encoded '/' in the path (a bad name), a foreign
    `Host`, a write or a WebSocket from a foreign `Origin`, and any request past
    GATEWAY_MAX_CONNECTIONS open connections (`capacity` raises `TooManyConnections`: 503,
    WebSocket 1013).

    A foreign Host or Origin gets its HTTP error even on a WebSocket handshake, instead of the
    upgrade: no connection is ever opened for a page of another site. The other refusals accept
    and close with the error table's code, which a browser client can read (a refused handshake
    shows it nothing but 1006)."""

    def __init__(self, app: ASGIApp, *, listen: str, allowed_hosts: tuple[str, ...],
                 allowed_origins: tuple[str, ...], capacity: Callable[[], None]) -> None:
        self.app, self.listen, self.capacity = app, listen, capacity
        self.allowed_hosts, self.allowed_origins = allowed_hosts, allowed_origins

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        """Not a coroutine function: a connection it lets through (a follower, for hours) holds
        no frame of it."""
        if scope["type"] in ("http", "websocket"):
            error = self.check(scope)
            if error is not None:
                return self.refuse(error, scope, receive, send)
        return self.app(scope, receive, send)

    @staticmethod
    async def refuse(error: ApiError, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            response = error.response()
            if error.status == 503:
                response.headers["connection"] = "close"  # an over-limit connection is not kept
            await response(scope, receive, send)
        elif error.code in BEFORE_UPGRADE:
            await WebSocket(scope, receive, send).send_denial_response(error.response())
        else:
            await refuse_websocket(WebSocket(scope, receive, send), error.ws_code, error.message)

    def check(self, scope: Scope) -> ApiError | None:
        if b"%2f" in scope.get("raw_path", b"").lower():
            # Names never contain '/', and the router matches the decoded path, where `a%2Fb`
            # would become two segments and a confusing 404.
            return bad_request("project and session names cannot contain '/' (%2F in the path)", "bad_name")
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", ())
                   if k in (b"host", b"origin")}
        host = headers.get("host")
        if not host_allowed(host, self.listen, self.allowed_hosts):
            return ApiError(400, "host_not_allowed",
                            f"Host {host_name(host or '')!r} does not name this gateway: "
                            "add it to GATEWAY_ALLOWED_HOSTS")
        websocket = scope["type"] == "websocket"
        if (websocket or scope["method"] in WRITES) and not same_or_allowed_origin(
                headers.get("origin"), host, self.allowed_origins):
            act = "open a WebSocket" if websocket else "write"
            return ApiError(403, "origin_not_allowed",
                            f"origin {headers['origin']!r} may not {act} here: add it to GATEWAY_ALLOWED_ORIGINS")
        if scope["path"] != "/healthz":  # liveness holds under load; readiness may fail
            try:
                self.capacity()
            except TooManyConnections as exc:
                return api_error(exc)
        return None


def require_json(request: Request, *, ndjson: tuple[str, ...] = ()) -> None:
    """415 unless the body is declared JSON (or one of the `ndjson` types a route documents)."""
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media in JSON_TYPES or media.endswith("+json") or media in ndjson:
        return
    wanted = " or ".join(("application/json", *ndjson[:1]))
    raise ApiError(415, "unsupported_media_type", f"content type {media or 'none'!r} not accepted: use {wanted}")
