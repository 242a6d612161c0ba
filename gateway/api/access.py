"""Authorization of every route and transport through the configured `Authorizer`.

Verbs follow Kubernetes RBAC on `agenticsessions`, so `GATEWAY_AUTH=kubernetes` asks exactly the
question a cluster admin can grant: `get` to read a session (status, streams, export), `list` to
list a project's sessions, `update` to write (append, runs, interrupt, feedback), `delete` to drop
a log. The token comes from `Authorization: Bearer`, or `?token=` for clients that cannot set
headers (browser WebSocket and EventSource).
"""

from __future__ import annotations

from collections.abc import Mapping

from gateway.api.errors import ApiError
from gateway.auth import AuthBackendError, AuthDecision
from gateway.runtime import Gateway

READ, LIST, WRITE, DELETE = "get", "list", "update", "delete"


def credential(headers: Mapping[str, str], query: Mapping[str, str]) -> str | None:
    auth = headers.get("authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return query.get("token") or None


async def authorize(
    gw: Gateway, headers: Mapping[str, str], query: Mapping[str, str], project: str, verb: str
) -> AuthDecision:
    """The decision if allowed; else ApiError 401 (no or bad credential), 403, or 503 (cannot ask)."""
    try:
        decision = await gw.authorizer.check(credential(headers, query), project, verb)
    except AuthBackendError as exc:
        raise ApiError(503, "auth_unavailable", f"cannot check the credential right now: {exc}") from exc
    if decision.status == "unauthenticated":
        raise ApiError(401, "unauthenticated", decision.reason)
    if decision.status == "forbidden":
        raise ApiError(403, "forbidden", decision.reason)
    return decision
