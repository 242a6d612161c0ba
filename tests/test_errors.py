"""The error table: one status and one WebSocket close code per error, whatever raised it."""

from __future__ import annotations

import pytest

from gateway.api.errors import HANDLED, ApiError, api_error, close_reason, shutting_down
from gateway.auth import AuthBackendError
from gateway.names import NameError_
from gateway.runner.client import RunnerError
from gateway.runner.runs import RunConflict
from gateway.sessions.catalog import CatalogError
from gateway.sessions.registry import TooManyConnections
from gateway.store.base import DiskFull, ProjectMismatch, SessionNotFound, StoreError, StoreUnavailable, TooLarge
from gateway.store.cursor import CursorError

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(("exc", "status", "code", "ws_code"), [
    (SessionNotFound("no such session"), 404, "not_found", 4404),
    (ProjectMismatch("other project"), 409, "project_mismatch", 4409),
    (DiskFull("disk full"), 507, "disk_full", 1011),
    (StoreUnavailable("NATS JetStream unreachable"), 503, "store_unavailable", 1013),
    (TooLarge("over max_payload"), 413, "too_large", 1009),
    (StoreError("log ended inside line 3"), 500, "internal", 1011),
    (CatalogError("invalid", "malformed continue token"), 400, "invalid", 4400),
    (CatalogError("expired", "list expired"), 410, "expired", 1011),
    (CatalogError("unavailable", "API down"), 503, "unavailable", 1013),
    (RunnerError(502, "runner_unavailable", "cannot reach"), 502, "runner_unavailable", 1011),
    (RunConflict("busy"), 409, "run_in_progress", 4409),
    (AuthBackendError("timeout"), 503, "auth_unavailable", 1013),
    (TooManyConnections("at the limit"), 503, "too_many_connections", 1013),
    (NameError_("bad name"), 400, "bad_name", 4400),
    (CursorError("malformed cursor"), 400, "bad_cursor", 4400),
    (ApiError(413, "body_too_large", "too big"), 413, "body_too_large", 1009),
])
def test_every_error_has_one_status_and_close_code(exc: Exception, status: int, code: str, ws_code: int) -> None:
    assert isinstance(exc, HANDLED)
    error = api_error(exc)
    assert (error.status, error.code, error.ws_code) == (status, code, ws_code)
    assert error.message


def test_shutting_down_is_503_and_going_away() -> None:
    error = shutting_down()
    assert (error.status, error.code, error.ws_code) == (503, "shutting_down", 1001)


def test_an_error_outside_the_table_is_a_bug() -> None:
    with pytest.raises(TypeError):
        api_error(KeyError("x"))


def test_close_reason_fits_a_close_frame() -> None:
    assert len(close_reason("é" * 200).encode()) <= 123
    assert close_reason("short") == "short"
