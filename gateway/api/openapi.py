"""`GET /openapi.json`: an OpenAPI 3.1 description generated from the app's routes, never kept by hand.

Paths, methods and path parameters come from the routes themselves and each summary from its
handler's docstring, so a route added to the app is described without anyone editing a file.
Bodies and answers are described by the error shape every route shares (PROTOCOL §3);
docs/api.md has the rest.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib.metadata import version
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

NAME_PATTERN = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {"type": "object", "required": ["code", "message"],
                             "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}},
}


def _summary(route: Route) -> str:
    doc = (route.endpoint.__doc__ or route.name).strip().splitlines()[0]
    return doc.rstrip(".")


def describe(routes: Sequence[BaseRoute], version: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document of every HTTP route in `routes` (WebSocket and static mounts aside)."""
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        if not isinstance(route, Route) or not route.methods:
            continue
        params = [{"name": name, "in": "path", "required": True, "schema": {"type": "string", "pattern": NAME_PATTERN}}
                  for name in route.param_convertors]
        for method in sorted(route.methods - {"HEAD"}):
            slug = route.path.strip("/").replace("/", "_").replace("{", "").replace("}", "") or "root"
            paths.setdefault(route.path, {})[method.lower()] = {
                "operationId": f"{method.lower()}_{slug}",
                "summary": _summary(route),
                "parameters": params,
                "responses": {
                    "2XX": {"description": "success (see docs/api.md for the body)"},
                    "default": {"description": "an error (PROTOCOL §3)",
                                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
                },
            }
    return {
        "openapi": "3.1.0",
        "info": {"title": "agui-gateway", "version": version},
        "paths": paths,
        "components": {"schemas": {"Error": ERROR}},
    }


async def openapi(request: Request) -> Response:
    """The OpenAPI 3.1 description of this gateway's HTTP routes."""
    return JSONResponse(describe(request.app.routes, version("agui-gateway")))
