"""`GET /v1/projects/P/sessions`: a project's sessions, from the configured catalog, paged."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.api.access import LIST, authorize
from gateway.api.errors import ApiError, bad_request
from gateway.names import NameError_, check_name
from gateway.runtime import Gateway, gateway_of
from gateway.sessions.catalog import CatalogError

DEFAULT_LIMIT, MAX_LIMIT = 20, 100
_CATALOG_STATUS = {"invalid": 400, "expired": 410, "unavailable": 503}


def catalog_error(exc: CatalogError) -> ApiError:
    return ApiError(_CATALOG_STATUS[exc.code], exc.code, exc.message)


def int_param(query: dict[str, str], name: str, default: int, lo: int, hi: int | None = None) -> int:
    raw = query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise bad_request(f"{name} must be an integer, got {raw[:32]!r}") from None
    if value < lo or (hi is not None and value > hi):
        raise bad_request(f"{name} must be between {lo} and {hi}" if hi else f"{name} must be at least {lo}")
    return value


async def listing(request: Request) -> tuple[Gateway, str, dict[str, str], int]:
    """Gateway, project, query and limit of a sessions list request, once `list` is allowed."""
    gw = gateway_of(request)
    try:
        project = check_name("project", request.path_params["project"])
    except NameError_ as exc:
        raise bad_request(str(exc), "bad_name") from exc
    await authorize(gw, request.headers, request.query_params, project, LIST)
    query = dict(request.query_params)
    return gw, project, query, int_param(query, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)


async def list_sessions(request: Request) -> Response:
    gw, project, query, limit = await listing(request)
    try:
        page = await gw.catalog.page(project, limit, query.get("continue") or None, query.get("search") or None)
    except CatalogError as exc:
        raise catalog_error(exc) from exc
    return JSONResponse({"items": [info.to_json() for info in page.items], "continue": page.continue_token})
