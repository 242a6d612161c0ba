"""`GET /openapi.json`: an OpenAPI 3.1 description generated from the app's routes, never kept by hand.

Paths, methods and path parameters come from the routes; parameters, bodies, answers and links
from the `@operation` declared next to each handler (`gateway.api.spec`); summaries from the
handlers' docstrings. The refusals every route shares (the guard's, authorization's, the
session's) are added here by what the operation is, each with the PROTOCOL §3 error body.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from importlib.metadata import version
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from gateway.api.spec import (
    ERROR_CODES,
    ERROR_MEANING,
    NAME,
    SCHEMAS,
    STRING,
    Link,
    Operation,
    declaration,
    json_answer,
    operation,
    ref,
)

WRITES = {"POST", "PUT", "PATCH", "DELETE"}
SECURITY = {
    "bearer": {"type": "http", "scheme": "bearer", "description": "GATEWAY_AUTH=token or kubernetes"},
    "token": {"type": "apiKey", "in": "query", "name": "token",
              "description": "the same credential, for clients that cannot set headers"},
}


def _summary(route: Route) -> str:
    doc = (route.endpoint.__doc__ or route.name).strip().splitlines()[0]
    return doc.rstrip(".")


def _operation_id(method: str, path: str) -> str:
    slug = path.strip("/").replace("/", "_").replace("{", "").replace("}", "") or "root"
    return f"{method.lower()}_{slug}"


def shared_errors(op: Operation, method: str) -> set[int]:
    """The error statuses an operation shares with others, by what it is."""
    statuses = {400, 503, *op.errors}  # the guard: Host and '%2F' (400), the connection limit (503)
    if method in WRITES:
        statuses.add(403)  # a foreign Origin
    if op.access != "open":
        statuses |= {401, 403}
    if op.access == "session":
        statuses |= {404, 409, 500}
    if op.body:
        statuses |= {413, 415}
    return statuses


def _error(status: int) -> dict[str, Any]:
    """The shared answer of an error status (`components.responses`), listing its codes."""
    codes = ", ".join(ERROR_CODES.get(status, ("http_error",)))
    return {"description": f"{ERROR_MEANING.get(status, 'an error')} ({codes})",
            "content": {"application/json": {"schema": ref("Error")}}}


def _error_ref(status: int) -> dict[str, Any]:
    return {"$ref": f"#/components/responses/Error{status}"}


def _link(link: Link, source: str, targets: dict[Callable[..., Any], list[tuple[str, str]]]) -> dict[str, Any]:
    """The link to the route of `link.target` nearest `source` (the same prefix, `/v1` or `/api`)."""
    path, method = max(targets[link.target], key=lambda pm: len(_common_prefix(pm[0], source)))
    return {"operationId": _operation_id(method, path), "parameters": dict(link.parameters),
            "description": link.description}


def _common_prefix(a: str, b: str) -> str:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return a[:n]


def _describe_one(route: Route, method: str, op: Operation,
                  targets: dict[Callable[..., Any], list[tuple[str, str]]]) -> dict[str, Any]:
    params = [{"name": name, "in": "path", "required": True,
               "schema": op.path.get(name, NAME if name in ("project", "session") else STRING)}
              for name in route.param_convertors]
    responses: dict[str, Any] = {str(s): _error_ref(s) for s in sorted(shared_errors(op, method))}
    responses |= {str(status): dict(body) for status, body in op.answers.items()}
    if op.links:
        first = min(s for s in op.answers if 200 <= s < 300)
        responses[str(first)]["links"] = {name: _link(link, route.path, targets) for name, link in op.links.items()}
    out: dict[str, Any] = {"operationId": _operation_id(method, route.path), "summary": _summary(route),
                           "parameters": [*params, *op.params], "responses": responses}
    if op.body:
        out["requestBody"] = {"required": op.body_required,
                              "content": {media: {"schema": schema} for media, schema in op.body.items()}}
    if op.access != "open":
        out["security"] = [{}, {"bearer": []}, {"token": []}]  # {}: GATEWAY_AUTH=none
    return out


UNDECLARED = Operation(answers={200: {"description": "success (see docs/api.md)"}})


def describe(routes: Sequence[BaseRoute], version: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document of every HTTP route in `routes` (WebSocket and static mounts aside)."""
    http = [(route, method) for route in routes if isinstance(route, Route) and route.methods
            for method in sorted(route.methods - {"HEAD"})]
    targets: dict[Callable[..., Any], list[tuple[str, str]]] = {}
    for route, method in http:
        targets.setdefault(route.endpoint, []).append((route.path, method))
    paths: dict[str, dict[str, Any]] = {}
    components = dict(SCHEMAS)
    for route, method in http:
        op = declaration(route.endpoint) or UNDECLARED
        components |= op.components
        paths.setdefault(route.path, {})[method.lower()] = _describe_one(route, method, op, targets)
    return {
        "openapi": "3.1.0",
        "info": {"title": "agui-gateway", "version": version,
                 "description": "Generated from the gateway's routes; the wire contract is docs/protocol.md."},
        "paths": paths,
        "components": {"schemas": components, "securitySchemes": SECURITY,
                       "responses": {f"Error{status}": _error(status) for status in sorted(ERROR_MEANING)}},
    }


@operation(answers={200: json_answer("this document", {"type": "object", "required": ["openapi", "paths"]})})
async def openapi(request: Request) -> Response:
    """The OpenAPI 3.1 description of this gateway's HTTP routes."""
    return JSONResponse(describe(request.app.routes, version("agui-gateway")))
