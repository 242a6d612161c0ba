"""The session lists of the NATS store: the key-value entries every replica shares
(`gateway.store.nats.sessions`), paged as the files catalog pages its folders."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from gateway.names import is_valid_name
from gateway.sessions.catalog import (
    CatalogError,
    NewestFirst,
    OffsetPage,
    SessionInfo,
    SessionPage,
    after_of,
    check_window,
    info_of,
    name_page,
    names_after,
    needle_of,
)
from gateway.store.base import StoreError
from gateway.store.nats.sessions import SessionDirectory

CHUNK = 256
"""Entries read in one batched request while filling a page."""


@contextlib.contextmanager
def _listing() -> Iterator[None]:
    """NATS unreachable while listing: the catalog's `unavailable` (503), as for any catalog."""
    try:
        yield
    except StoreError as exc:
        raise CatalogError("unavailable", f"cannot list sessions: {exc}") from exc


class NatsCatalog:
    """A `SessionCatalog` over the session entries of the NATS store: the same lists on every replica."""

    def __init__(self, directory: SessionDirectory) -> None:
        self._dir = directory

    async def page(
        self, project: str, limit: int, continue_token: str | None, search: str | None, *, unclaimed: bool = False
    ) -> SessionPage:
        """`unclaimed` is for the files catalog's legacy folders: every NATS session has its project."""
        check_window(limit)
        after, needle = after_of(continue_token), needle_of(search)
        found: list[SessionInfo] = []
        step = CHUNK if needle else limit + 1
        with _listing():
            names = await self._dir.names(project)
            names = names[names_after(names, after):]
            for i in range(0, len(names), step):
                found += [info for info in await self._infos(project, names[i : i + step])
                          if info.matches(needle)]
                if len(found) > limit:
                    break
        return name_page(iter(found), limit)

    async def get(self, project: str, session: str) -> SessionInfo | None:
        if not is_valid_name(session):
            return None
        with _listing():
            found = await self._infos(project, [session])
        return found[0] if found else None

    async def offset_page(
        self, project: str, limit: int, offset: int, search: str | None, *, unclaimed: bool = False
    ) -> OffsetPage:
        check_window(limit, offset)
        needle = needle_of(search)
        top = NewestFirst(offset + limit)
        with _listing():
            names = await self._dir.names(project)
            for i in range(0, len(names), CHUNK):
                for info in await self._infos(project, names[i : i + CHUNK]):
                    if info.matches(needle):
                        top.add(info)
        return top.window(offset, limit)

    async def _infos(self, project: str, names: list[str]) -> list[SessionInfo]:
        """Entries of `names` (in that order) that exist and belong to `project`."""
        infos = (info_of(project, name, entry, 0) for name, entry in await self._dir.entries(project, names))
        return [info for info in infos if info is not None]

    async def aclose(self) -> None:
        """The connection belongs to the store."""
