"""Session catalogs: the `GET .../sessions` lists of PROTOCOL §3, from folders or from Kubernetes.

A catalog only lists; it never creates or changes sessions. Two list shapes are served: cursor pages
(`page`, the `/v1` API, stable while sessions are added) and offset pages (`offset_page`, the
platform backend's compatibility route, newest first with a total count). Both keep memory bounded
by the page they return, never by the number of sessions.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import heapq
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Protocol, TypeGuard

import anyio.to_thread
import orjson

from gateway.names import is_valid_name
from gateway.store.base import StoreError
from gateway.store.layout import read_meta, session_names

CatalogErrorCode = Literal["invalid", "expired", "unavailable"]


class CatalogError(Exception):
    """A list cannot be served. `code` tells the HTTP status: invalid 400, expired 410, unavailable 503."""

    def __init__(self, code: CatalogErrorCode, message: str) -> None:
        super().__init__(message)
        self.code: CatalogErrorCode = code
        self.message = message


@dataclass(frozen=True)
class SessionInfo:
    project: str
    name: str
    display_name: str | None
    created: str | None  # RFC 3339 creation time
    runner_port: int | None  # from the session record when known
    phase: str | None  # e.g. status.phase of the custom resource
    claimed: bool = True  # False: a legacy folder no project has claimed (listed to admins only)

    def to_json(self) -> dict[str, object]:
        return {
            "project": self.project,
            "session": self.name,
            "displayName": self.display_name,
            "created": self.created,
            "runnerPort": self.runner_port,
            "phase": self.phase,
            "claimed": self.claimed,
        }

    def matches(self, needle: str | None) -> bool:
        """`needle` is a lowercased search string: a substring of the name or the display name."""
        if not needle:
            return True
        return needle in self.name or (self.display_name is not None and needle in self.display_name.lower())


@dataclass(frozen=True)
class SessionPage:
    items: list[SessionInfo]
    continue_token: str | None


@dataclass(frozen=True)
class OffsetPage:
    items: list[SessionInfo]  # newest first
    total: int


class SessionCatalog(Protocol):
    async def page(
        self, project: str, limit: int, continue_token: str | None, search: str | None, *, unclaimed: bool = False
    ) -> SessionPage:
        """Up to `limit` sessions after `continue_token`; every session appears in exactly one page.

        `unclaimed`: also the legacy folders no project has claimed (the files catalog has them).
        """
        ...

    async def get(self, project: str, session: str) -> SessionInfo | None:
        """The session, or None when project `project` has no such session."""
        ...

    async def offset_page(
        self, project: str, limit: int, offset: int, search: str | None, *, unclaimed: bool = False
    ) -> OffsetPage:
        """Sessions `offset .. offset+limit` of the list sorted newest first, and the number of matches."""
        ...

    async def aclose(self) -> None: ...


def check_window(limit: int, offset: int = 0) -> None:
    if limit < 1:
        raise CatalogError("invalid", f"limit must be at least 1, got {limit}")
    if offset < 0:
        raise CatalogError("invalid", f"offset must not be negative, got {offset}")


def needle_of(search: str | None) -> str | None:
    return search.lower() if search else None


def after_of(continue_token: str | None) -> str | None:
    """The last name of the previous page, from a cursor page's continue token."""
    return decode_token(continue_token, ("after",))["after"] if continue_token else None


def encode_token(state: dict[str, str | None]) -> str:
    """Continue tokens are opaque to clients: URL-safe base64 of a small JSON object."""
    return base64.urlsafe_b64encode(orjson.dumps(state)).decode().rstrip("=")


def decode_token(token: str, keys: tuple[str, ...]) -> dict[str, str | None]:
    """Inverse of `encode_token`; any token this catalog did not make is `invalid` (400)."""
    try:
        state = orjson.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (binascii.Error, ValueError) as exc:
        raise CatalogError("invalid", "malformed continue token") from exc
    if (
        not isinstance(state, dict)
        or set(state) != set(keys)
        or not all(v is None or isinstance(v, str) for v in state.values())
    ):
        raise CatalogError("invalid", "malformed continue token")
    return state


class NewestFirst:
    """Keeps the `keep` newest sessions seen and counts all of them: O(keep) memory for any list size."""

    def __init__(self, keep: int) -> None:
        self._keep = keep
        self._heap: list[tuple[str, str, SessionInfo]] = []
        self.total = 0

    def add(self, info: SessionInfo) -> None:
        # Names are unique within a project, so tuples never compare the SessionInfo itself.
        entry = (info.created or "", info.name, info)
        self.total += 1
        if len(self._heap) < self._keep:
            heapq.heappush(self._heap, entry)
        elif entry > self._heap[0]:
            heapq.heapreplace(self._heap, entry)

    def window(self, offset: int, limit: int) -> OffsetPage:
        newest = sorted(self._heap, reverse=True)[offset : offset + limit]
        return OffsetPage(items=[info for _, _, info in newest], total=self.total)


def rfc3339_from_ms(ms: float) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class FileCatalog:
    """`GATEWAY_REGISTRY=files`: the sessions are the folders `<state_dir>/sessions/<name>/`.

    A folder's `meta.json` names its project; a folder without one, or whose project is null (a
    legacy volume whose sessions are not claimed yet), is listed for every project to admins only
    (`unclaimed`), since any project may claim it with a write. A folder whose `meta.json` cannot
    be read or parsed is not listed: it cannot be attributed to a project.
    """

    def __init__(self, state_dir: Path) -> None:
        self._root = state_dir / "sessions"

    async def page(
        self, project: str, limit: int, continue_token: str | None, search: str | None, *, unclaimed: bool = False
    ) -> SessionPage:
        check_window(limit)
        return await anyio.to_thread.run_sync(self._page, project, limit, after_of(continue_token), needle_of(search),
                                              unclaimed)

    async def get(self, project: str, session: str) -> SessionInfo | None:
        if not is_valid_name(session):
            return None
        return await anyio.to_thread.run_sync(self._info, project, session, True)

    async def offset_page(
        self, project: str, limit: int, offset: int, search: str | None, *, unclaimed: bool = False
    ) -> OffsetPage:
        check_window(limit, offset)
        return await anyio.to_thread.run_sync(self._offset_page, project, limit, offset, needle_of(search), unclaimed)

    async def aclose(self) -> None:
        """Nothing is held open between calls."""

    def _matches(self, project: str, names: list[str], needle: str | None, unclaimed: bool) -> Iterator[SessionInfo]:
        for name in names:
            info = self._info(project, name, unclaimed)
            if info is not None and info.matches(needle):
                yield info

    def _page(self, project: str, limit: int, after: str | None, needle: str | None, unclaimed: bool) -> SessionPage:
        names = session_names(self._root)
        return name_page(self._matches(project, names[names_after(names, after):], needle, unclaimed), limit)

    def _offset_page(self, project: str, limit: int, offset: int, needle: str | None, unclaimed: bool) -> OffsetPage:
        top = NewestFirst(offset + limit)
        for info in self._matches(project, session_names(self._root), needle, unclaimed):
            top.add(info)
        return top.window(offset, limit)

    def _info(self, project: str, name: str, unclaimed: bool) -> SessionInfo | None:
        folder = self._root / name
        try:
            meta = read_meta(folder)  # the store's own reader: one place knows the layout
            mtime_ms = folder.lstat().st_mtime * 1000
        except FileNotFoundError:
            return None  # removed while listing
        except (OSError, StoreError):
            return None
        if meta is None or meta["project"] is None:
            return SessionInfo(project, name, None, rfc3339_from_ms(mtime_ms), None, None, False) if unclaimed else None
        return info_of(project, name, meta, mtime_ms)


def info_of(project: str, name: str, meta: dict[str, Any], fallback_ms: float) -> SessionInfo | None:
    """A session's entry from its metadata (`meta.json`, or the NATS store's key-value entry);
    None if the metadata names another project. `fallback_ms` stands in for a missing createdAt."""
    if meta.get("project") != project:
        return None
    created = meta.get("createdAt")
    display = meta.get("displayName")
    port = meta.get("runnerPort")
    return SessionInfo(
        project=project,
        name=name,
        display_name=display if isinstance(display, str) else None,
        created=rfc3339_from_ms(created if is_int(created) else fallback_ms),
        runner_port=port if is_int(port) and 0 < port < 65536 else None,
        phase=None,
    )


def names_after(names: list[str], after: str | None) -> int:
    """Where a cursor page starts in sorted `names`: just past the previous page's last name."""
    return bisect.bisect_right(names, after) if after is not None else 0


def name_page(found: Iterator[SessionInfo], limit: int) -> SessionPage:
    """Up to `limit` of `found` (matches in name order) as a cursor page."""
    items = [info for _, info in zip(range(limit), found, strict=False)]
    # Look one match ahead so the last page says so instead of handing out a token to an empty page.
    more = len(items) == limit and next(found, None) is not None
    token = encode_token({"after": items[-1].name}) if more else None
    return SessionPage(items=items, continue_token=token)


def is_int(value: object) -> TypeGuard[int]:
    """JSON integers only: `True` is an int to Python but not a port or a timestamp."""
    return isinstance(value, int) and not isinstance(value, bool)
