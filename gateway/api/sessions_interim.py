"""Interim `GET /v1/projects/P/sessions` for the viewer: folders under the state dir, by name.

Stands in until the registry-backed list lands; same shape (`{"items": [...], "continue": T|null}`,
`limit` default 20, max 100, `search` a substring of the name). `continue` is the last name
of the previous page.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.api.errors import bad_request
from gateway.names import is_valid_name
from gateway.runtime import Gateway
from gateway.store.base import StoreError
from gateway.store.files import read_meta


def _scan(sessions: Path, project: str, after: str, search: str, limit: int) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    names = sorted(p.name for p in sessions.iterdir()) if sessions.is_dir() else []
    for name in names:
        if name <= after or search not in name or not is_valid_name(name):
            continue
        folder = sessions / name
        if folder.is_symlink() or not folder.is_dir():
            continue
        try:
            meta = read_meta(folder)
        except StoreError:
            continue
        if meta is None or meta["project"] != project:
            continue
        created = meta.get("createdAt")
        items.append({"project": project, "session": name, "displayName": name, "created": created})
        if len(items) > limit:
            break
    return items


async def list_sessions(request: Request) -> Response:
    project = request.path_params["project"]
    if not is_valid_name(project):
        raise bad_request(f"invalid project name {project[:80]!r}", "bad_name")
    try:
        limit = min(100, max(1, int(request.query_params.get("limit", "20"))))
    except ValueError:
        raise bad_request("limit must be an integer") from None
    gw: Gateway = request.app.state.gateway
    items = await anyio.to_thread.run_sync(
        _scan, gw.store.sessions_dir, project, request.query_params.get("continue", ""),
        request.query_params.get("search", ""), limit,
    )
    more = len(items) > limit
    items = items[:limit]
    return JSONResponse({"items": items, "continue": items[-1]["session"] if more else None})
