"""`GET /v1/projects/P/sessions`: a project's sessions, from the configured catalog, paged."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.api.access import LIST, credential, project_access, reads_every_project
from gateway.api.errors import bad_request
from gateway.api.spec import INTEGER, NAME, STRING, json_answer, nullable, obj, operation
from gateway.api.spec import query as param
from gateway.runtime import Gateway

DEFAULT_LIMIT, MAX_LIMIT = 20, 100


def ascii_int(text: str) -> int:
    """A non-negative integer written in ASCII digits only: `int()` would also take `1_0`,
    spaces and other scripts' digits, which no client means."""
    if not (text.isascii() and text.isdigit()):
        raise ValueError(text)
    return int(text)


def int_param(query: dict[str, str], name: str, default: int, lo: int, hi: int | None = None) -> int:
    raw = query.get(name)
    if raw is None:
        return default
    try:
        value = ascii_int(raw)
    except ValueError:
        raise bad_request(f"{name} must be an integer, got {raw[:32]!r}") from None
    if value < lo or (hi is not None and value > hi):
        raise bad_request(f"{name} must be between {lo} and {hi}" if hi else f"{name} must be at least {lo}")
    return value


async def listing(request: Request) -> tuple[Gateway, str, dict[str, str], int, bool]:
    """Gateway, project, query and limit of a sessions list request, once `list` is allowed, and
    whether unclaimed legacy folders are listed (to admins only)."""
    gw, project = await project_access(request, LIST)
    query = dict(request.query_params)
    unclaimed = gw.settings.registry == "files" and await reads_every_project(
        gw, credential(request.headers, request.query_params))
    return gw, project, query, int_param(query, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT), unclaimed


LIMIT = param("limit", {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT}, f"default {DEFAULT_LIMIT}")
SEARCH = param("search", STRING, "a substring of the name or display name")
SESSION_INFO = obj(("project", "session"), project=NAME, session=NAME, displayName=nullable(STRING),
                   created=nullable(STRING), runnerPort=nullable(INTEGER), phase=nullable(STRING),
                   claimed={"type": "boolean", "description": "false: a legacy folder no project owns (admins only)"})


@operation(access="project", errors=(410,), params=(LIMIT, param("continue", STRING, "the previous page's"), SEARCH),
           answers={200: json_answer("a page of the project's sessions", obj(
               ("items", "continue"), items={"type": "array", "items": SESSION_INFO},
               **{"continue": nullable(STRING)}))})
async def list_sessions(request: Request) -> Response:
    gw, project, query, limit, unclaimed = await listing(request)
    page = await gw.catalog.page(project, limit, query.get("continue") or None, query.get("search") or None,
                                 unclaimed=unclaimed)
    gw.caches.listed(project, [info.name for info in page.items if info.claimed])
    return JSONResponse({"items": [info.to_json() for info in page.items], "continue": page.continue_token})
