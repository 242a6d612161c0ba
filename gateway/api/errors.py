"""One error table for every surface.

The errors of the layers below the handlers (store, catalog, runner, auth backend, registry,
names, cursors) are translated here and nowhere else: into a PROTOCOL §3 JSON error for HTTP
(SSE and NDJSON fail as HTTP, before their body starts) and into a close code for WebSocket
(PROTOCOL §4). The app registers one handler for every class in `HANDLED`, so a handler lets
them propagate instead of catching and re-raising them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.responses import JSONResponse
from starlette.websockets import WebSocket

from gateway.auth import AuthBackendError
from gateway.names import NameError_
from gateway.runner.client import RunnerError
from gateway.runner.runs import RunConflict
from gateway.sessions.catalog import CatalogError
from gateway.sessions.registry import TooManyConnections
from gateway.store.base import StoreError
from gateway.store.cursor import CursorError

# HTTP status -> WebSocket close code (PROTOCOL §4). 409 has no code there: 4409 follows the
# same 4000 + status rule as the others.
WS_CODES = {400: 4400, 401: 4401, 403: 4403, 404: 4404, 409: 4409, 413: 1009, 503: 1013}
WS_CODE_OF_ERROR = {"shutting_down": 1001}
"""Errors whose close code is not their status's: a draining gateway is going away, clients reconnect."""
CATALOG_STATUS = {"invalid": 400, "expired": 410, "unavailable": 503}
REASON_MAX = 123
"""Bytes a WebSocket close reason may take (RFC 6455)."""


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    @property
    def ws_code(self) -> int:
        return WS_CODE_OF_ERROR.get(self.code) or WS_CODES.get(self.status, 1011)

    def response(self) -> JSONResponse:
        return JSONResponse({"error": {"code": self.code, "message": self.message}}, status_code=self.status)


def bad_request(message: str, code: str = "bad_request") -> ApiError:
    return ApiError(400, code, message)


def shutting_down() -> ApiError:
    """The one refusal of new work (streams, appends, runs) while the gateway drains: 503, or 1001."""
    return ApiError(503, "shutting_down",
                    "the gateway is shutting down; reconnect with your last cursor or retry on another instance")


_TABLE: tuple[tuple[type[Exception], Callable[[Any], ApiError]], ...] = (
    (ApiError, lambda exc: exc),
    (StoreError, lambda exc: ApiError(exc.status, exc.code, str(exc))),
    (CatalogError, lambda exc: ApiError(CATALOG_STATUS[exc.code], exc.code, exc.message)),
    (RunnerError, lambda exc: ApiError(exc.status, exc.code, exc.message)),
    (RunConflict, lambda exc: ApiError(409, "run_in_progress", str(exc))),
    (AuthBackendError, lambda exc: ApiError(503, "auth_unavailable", f"cannot check the credential right now: {exc}")),
    (TooManyConnections, lambda exc: ApiError(503, "too_many_connections", str(exc))),
    (NameError_, lambda exc: bad_request(str(exc), "bad_name")),
    (CursorError, lambda exc: bad_request(str(exc), "bad_cursor")),
)
HANDLED: tuple[type[Exception], ...] = tuple(cls for cls, _ in _TABLE)


def api_error(exc: Exception) -> ApiError:
    """What a client is told about `exc`, one of `HANDLED`."""
    for cls, convert in _TABLE:
        if isinstance(exc, cls):
            return convert(exc)
    raise TypeError(f"no entry in the error table for {type(exc).__name__}") from exc


def close_reason(text: str) -> str:
    return text.encode()[:REASON_MAX].decode(errors="ignore")


async def refuse_websocket(ws: WebSocket, code: int, reason: str) -> None:
    """Turn a WebSocket away before streaming: accept (so the client sees the code), then close."""
    await ws.accept()
    await ws.close(code, close_reason(reason))
