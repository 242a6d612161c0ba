"""`GATEWAY_REGISTRY=kubernetes`: sessions are `agenticsessions.vteam.ambient-code/v1alpha1` objects.

The namespace is the project. Lists go through the API server's own chunking (`limit` and
`continue`), so a namespace with any number of sessions costs one API page of memory at a time.

Fields read from each object: `metadata.name`, `metadata.creationTimestamp`, `spec.displayName`,
`status.phase`, and the runner port from `status.runnerPort`, else `spec.runnerPort` (the upstream
schema has neither, so the runner URL falls back to its default port unless an operator sets one).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from gateway.k8s.client import TRANSPORT_ERRORS
from gateway.sessions.catalog import (
    CatalogError,
    CatalogErrorCode,
    NewestFirst,
    OffsetPage,
    SessionInfo,
    SessionPage,
    check_window,
    decode_token,
    encode_token,
    is_int,
    needle_of,
)

GROUP = "vteam.ambient-code"
VERSION = "v1alpha1"
PLURAL = "agenticsessions"

# A search may have to look at many objects per match: fetch at least this many per request.
SEARCH_FETCH = 100
# Full walks (offset pages) fetch this many per request: few round trips, bounded memory.
SCAN_FETCH = 500
# A full walk restarted this many times because its continue token expired gives up.
SCAN_ATTEMPTS = 3


@contextmanager
def _api_errors(action: str) -> Iterator[None]:
    """Map API failures to catalog errors: an expired continue token (410) is `expired`, anything
    else (RBAC denial of the gateway itself, 5xx, network) is `unavailable`."""
    try:
        yield
    except ApiException as exc:
        code: CatalogErrorCode = "expired" if exc.status == 410 else "unavailable"
        raise CatalogError(code, f"{action}: HTTP {exc.status} {exc.reason}") from exc
    except TRANSPORT_ERRORS as exc:
        raise CatalogError("unavailable", f"{action}: {exc!r}") from exc


def session_info(project: str, obj: dict[str, Any]) -> SessionInfo:
    """A SessionInfo from an `agenticsessions` object as the API returns it (a plain dict)."""
    meta, spec, status = (_section(obj, key) for key in ("metadata", "spec", "status"))
    ports = (status.get("runnerPort"), spec.get("runnerPort"))
    return SessionInfo(
        project=project,
        name=str(meta.get("name", "")),
        display_name=_str(spec.get("displayName")),
        created=_str(meta.get("creationTimestamp")),
        runner_port=next((p for p in ports if is_int(p) and 0 < p < 65536), None),
        phase=_str(status.get("phase")),
    )


def _section(obj: dict[str, Any], key: str) -> dict[str, Any]:
    value = obj.get(key)
    return value if isinstance(value, dict) else {}


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None


class KubernetesCatalog:
    """Lists `agenticsessions` in namespace = project. The `ApiClient` belongs to the caller, which
    closes it; it is typically shared with the authorizer.

    Continue tokens of `page` hold the API server's continue token of the API page being read and
    the name of the last session returned from it. The API server returns a namespace's objects in
    name order (storage key order), so resuming skips names up to that one and every matching
    session is returned exactly once, even when a page ends in the middle of an API page.
    """

    def __init__(self, api: client.ApiClient, *, request_timeout: float = 10.0) -> None:
        self._objects = client.CustomObjectsApi(api)
        self._timeout = request_timeout

    async def page(
        self, project: str, limit: int, continue_token: str | None, search: str | None, *, unclaimed: bool = False
    ) -> SessionPage:
        """`unclaimed` is for the files catalog's legacy folders: a custom resource has its namespace."""
        check_window(limit)
        cont, after = None, None
        if continue_token:
            state = decode_token(continue_token, ("c", "after"))
            cont, after = state["c"], state["after"]
        needle = needle_of(search)
        fetch = max(limit, SEARCH_FETCH) if needle else limit
        items: list[SessionInfo] = []
        while True:
            objects, next_cont = await self._list(project, fetch, cont)
            for i, obj in enumerate(objects):
                info = session_info(project, obj)
                if (after is not None and info.name <= after) or not info.matches(needle):
                    continue
                items.append(info)
                if len(items) == limit:
                    # Resume inside this API page if it has more, else at the next one.
                    token = None
                    if i + 1 < len(objects):
                        token = encode_token({"c": cont, "after": info.name})
                    elif next_cont:
                        token = encode_token({"c": next_cont, "after": None})
                    return SessionPage(items, token)
            if not next_cont:
                return SessionPage(items, None)
            cont, after = next_cont, None

    async def get(self, project: str, session: str) -> SessionInfo | None:
        obj = await self.object(project, session)
        return None if obj is None else session_info(project, obj)

    async def object(self, project: str, session: str) -> dict[str, Any] | None:
        """The AgenticSession object as the API returns it, or None when there is none."""
        with _api_errors(f"reading agenticsession {project}/{session}"):
            try:
                obj: dict[str, Any] = await self._objects.get_namespaced_custom_object(
                    GROUP, VERSION, project, PLURAL, session, _request_timeout=self._timeout
                )
            except ApiException as exc:
                if exc.status == 404:
                    return None
                raise
        return obj

    async def offset_page(
        self, project: str, limit: int, offset: int, search: str | None, *, unclaimed: bool = False
    ) -> OffsetPage:
        """Walks the whole namespace (the total needs it) keeping only the newest `offset + limit`.

        A walk whose continue token expires is restarted from scratch: mixing snapshots could count
        a session twice or miss one."""
        check_window(limit, offset)
        needle = needle_of(search)
        for _ in range(SCAN_ATTEMPTS):
            top = NewestFirst(offset + limit)
            cont: str | None = None
            try:
                while True:
                    objects, cont = await self._list(project, SCAN_FETCH, cont)
                    for obj in objects:
                        info = session_info(project, obj)
                        if info.matches(needle):
                            top.add(info)
                    if not cont:
                        return top.window(offset, limit)
            except CatalogError as exc:
                if exc.code != "expired":
                    raise
        raise CatalogError("unavailable", f"listing agenticsessions in {project}: list kept expiring")

    async def aclose(self) -> None:
        """The ApiClient is the caller's to close."""

    async def _list(
        self, project: str, limit: int, cont: str | None
    ) -> tuple[list[dict[str, Any]], str | None]:
        """One API page and the continue token of the next (None after the last)."""
        kwargs: dict[str, Any] = {"limit": limit, "_request_timeout": self._timeout}
        if cont:
            kwargs["_continue"] = cont
        with _api_errors(f"listing agenticsessions in {project}"):
            resp = await self._objects.list_namespaced_custom_object(
                GROUP, VERSION, project, PLURAL, **kwargs
            )
        return list(resp.get("items") or []), (resp.get("metadata") or {}).get("continue") or None
