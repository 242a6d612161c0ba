"""The session list of the NATS store (`GATEWAY_REGISTRY=files` with `GATEWAY_STORE=nats`).

The file store lists the folders of its state dir; replicas on NATS have none, so each session
has an entry in the key-value bucket `<stream>_SESSIONS`: key `<project>.<session>`, value the
same JSON as a file session's `meta.json` (`project`, `createdAt`, and `displayName` and
`runnerPort` if someone set them). The replica that opens a session first writes its entry
(create-if-absent); a project's list is the bucket's subjects under `<project>.`, so listing one
project never reads another's entries. DELETE starts a new epoch but keeps the session and its
entry, as with files.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from typing import Any

import orjson

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
from gateway.store.nats import layout
from gateway.store.nats.compact import Subjects, epoch_marker
from gateway.store.nats.conn import Conflict, NatsConn, Stored

log = logging.getLogger("gateway.store.nats")

CHUNK = 256
"""Entries read in one batched request while filling a page."""


class SessionDirectory:
    """The bucket of session entries: written by the store, read by `NatsCatalog`."""

    def __init__(self, conn: NatsConn) -> None:
        self.conn = conn
        self.bucket = f"{conn.stream}_SESSIONS"
        self.stream = f"KV_{self.bucket}"

    def subject(self, project: str, session: str) -> str:
        return f"$KV.{self.bucket}.{project}.{session}"

    async def ensure_bucket(self) -> None:
        await self.conn.ensure_bucket(self.bucket, max_age_s=0)

    async def ensure(self, project: str, session: str, created_ms: int | None,
                     fields: dict[str, Any] | None = None) -> None:
        """Write the session's entry unless it has one. `created_ms` None: the session existed
        before this replica saw it, so its creation time is read from its epoch's marker (or, once
        compacted, from the compaction index, which carries it).
        `fields`: more of its meta (a file session's `displayName`, ... when it is migrated)."""
        subject = self.subject(project, session)
        if await self.conn.get(last_by=subject, stream=self.stream) is not None:
            return
        if created_ms is None:
            head = await self.conn.get(last_by=layout.log_subject(self.conn.stream, session))
            placed = head.placed if head is not None else None
            subjects = Subjects.of(self.conn.stream, session)
            marker = await epoch_marker(self.conn, subjects, placed.base) if placed is not None else None
            created = marker.headers.get(layout.CREATED, "") if marker is not None else ""
            created_ms = int(created) if created.isdigit() else int(time.time() * 1000)
        entry = orjson.dumps({**(fields or {}), "project": project, "createdAt": created_ms})
        with contextlib.suppress(Conflict):  # another replica wrote it meanwhile
            await self.conn.publish(subject, entry, {layout.EXPECTED_LAST_SUBJECT_SEQ: "0"})

    async def names(self, project: str) -> list[str]:
        """The project's session names, sorted."""
        prefix = f"$KV.{self.bucket}.{project}."
        found = await self.conn.subjects(self.stream, prefix + "*")
        return sorted(name for s in found if is_valid_name(name := s[len(prefix):]))

    async def infos(self, project: str, names: list[str]) -> list[SessionInfo]:
        """Entries of `names` (in that order) that exist and belong to `project`."""
        got = {s.headers.get("Nats-Subject", ""): s for s in
               await self.conn.last_of(self.stream, [self.subject(project, n) for n in names])}
        out = []
        for name in names:
            stored = got.get(self.subject(project, name))
            info = _info(project, name, stored) if stored is not None else None
            if info is not None:
                out.append(info)
        return out


def _info(project: str, name: str, stored: Stored) -> SessionInfo | None:
    try:
        meta: Any = orjson.loads(stored.data)
    except orjson.JSONDecodeError:
        return None
    return info_of(project, name, meta, 0) if isinstance(meta, dict) else None


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
                found += [info for info in await self._dir.infos(project, names[i : i + step])
                          if info.matches(needle)]
                if len(found) > limit:
                    break
        return name_page(iter(found), limit)

    async def get(self, project: str, session: str) -> SessionInfo | None:
        if not is_valid_name(session):
            return None
        with _listing():
            found = await self._dir.infos(project, [session])
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
                for info in await self._dir.infos(project, names[i : i + CHUNK]):
                    if info.matches(needle):
                        top.add(info)
        return top.window(offset, limit)

    async def aclose(self) -> None:
        """The connection belongs to the store."""
