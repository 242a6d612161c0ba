"""Authorization of every route and transport, and the opening of a request's session.

Verbs follow Kubernetes RBAC on `agenticsessions`, so `GATEWAY_AUTH=kubernetes` asks exactly the
question a cluster admin can grant: `get` to read a session (status, streams, export), `list` to
list a project's sessions, `update` to write (append, runs, interrupt, feedback), `delete` to drop
a log. The token comes from `Authorization: Bearer`, or `?token=` for clients that cannot set
headers (browser WebSocket and EventSource).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from starlette.requests import HTTPConnection

from gateway.api.errors import ApiError, shutting_down
from gateway.auth import ALL_PROJECTS, AuthDecision
from gateway.names import check_name
from gateway.runtime import Gateway, gateway_of
from gateway.store.base import ProjectMismatch, SessionLog, SessionNotFound

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
    """The decision if allowed; else ApiError 401 (no or bad credential) or 403.

    An authority that cannot be asked raises `AuthBackendError` (503 in the error table).
    """
    decision = await gw.authorizer.check(credential(headers, query), project, verb)
    if decision.status == "unauthenticated":
        raise ApiError(401, "unauthenticated", decision.reason)
    if decision.status == "forbidden":
        raise ApiError(403, "forbidden", decision.reason)
    return decision


async def project_access(conn: HTTPConnection, verb: str) -> tuple[Gateway, str]:
    """The gateway and project of a request, once the name is valid and `verb` is allowed."""
    gw = gateway_of(conn)
    project = check_name("project", conn.path_params["project"])
    await authorize(gw, conn.headers, conn.query_params, project, verb)
    return gw, project


@dataclass(frozen=True)
class SessionAccess:
    """A request's session once its names are valid and its verb is allowed."""

    gw: Gateway
    project: str
    session: str
    user: str | None = None  # who the authorizer says is asking, when it names someone
    credential: str | None = None

    async def log(self, *, create: bool = False, claim: bool = False, poll: bool = True) -> SessionLog:
        """The session's log, up to date with what other processes appended since it was last looked at.

        A legacy folder no project has claimed is claimed by a write (`create`: append or run;
        `claim`: delete), and read only by a caller who may read every project (404 otherwise).

        A session the Kubernetes registry knows gets a log folder on first use; with the files
        registry, only `create` (an append) makes a new session. A log of another project is
        refused by the store: 409 to a caller who may read the owning project, else 404, as if
        the name were free (a 409 would tell a tenant which names its neighbours use).
        """
        gw, project, session = self.gw, self.project, self.session
        try:
            try:
                flog = await gw.store.open(project, session, create=create and gw.settings.registry == "files",
                                           claim=create or claim)
            except SessionNotFound:
                if gw.settings.registry != "kubernetes" or await gw.catalog.get(project, session) is None:
                    raise
                flog = await gw.store.open(project, session, create=True)
        except ProjectMismatch as exc:
            owner = await gw.authorizer.check(self.credential, exc.owner, READ)
            if owner.status != "ok":
                raise SessionNotFound(f"no session {session!r} in project {project!r}") from None
            raise
        if flog.project is None and not await reads_every_project(gw, self.credential):
            raise SessionNotFound(f"no session {session!r} in project {project!r}")
        if poll:  # an append needs none: it takes in what other writers added under the log's lock
            await flog.poll()
        return flog


async def reads_every_project(gw: Gateway, token: str | None) -> bool:
    """Whether the caller is an admin, who is shown legacy folders no project has claimed: a
    token for `*`, a cluster-wide Kubernetes grant, or no authentication at all."""
    decision = await gw.authorizer.check(token, ALL_PROJECTS, READ)
    return decision.status == "ok"


async def session_access(conn: HTTPConnection, verb: str, *, starts_work: bool | None = None) -> SessionAccess:
    """What every session route does first: check the names, refuse new work while the gateway
    drains (writes and streams: `starts_work` defaults to `verb == WRITE`), authorize `verb`."""
    gw = gateway_of(conn)
    project = check_name("project", conn.path_params["project"])
    session = check_name("session", conn.path_params["session"])
    if (verb == WRITE if starts_work is None else starts_work) and gw.draining.is_set():
        raise shutting_down()
    decision = await authorize(gw, conn.headers, conn.query_params, project, verb)
    return SessionAccess(gw, project, session, decision.user, credential(conn.headers, conn.query_params))
