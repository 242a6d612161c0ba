"""One error type for the HTTP and WebSocket surfaces, rendered as PROTOCOL §3 JSON errors."""

from __future__ import annotations

from starlette.responses import JSONResponse

from gateway.store.base import StoreError

# HTTP status -> WebSocket close code (PROTOCOL §4). 409 has no code there: 4409 follows the
# same 4000 + status rule as the others.
WS_CODES = {400: 4400, 401: 4401, 403: 4403, 404: 4404, 409: 4409, 413: 1009, 503: 1013}


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    @classmethod
    def from_store(cls, exc: StoreError) -> ApiError:
        return cls(exc.status, exc.code, str(exc))

    @property
    def ws_code(self) -> int:
        return WS_CODES.get(self.status, 1011)

    def response(self) -> JSONResponse:
        return JSONResponse({"error": {"code": self.code, "message": self.message}}, status_code=self.status)


def bad_request(message: str, code: str = "bad_request") -> ApiError:
    return ApiError(400, code, message)
