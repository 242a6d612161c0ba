"""The session entries of the NATS store, which `gateway.sessions.nats_catalog` lists
(`GATEWAY_REGISTRY=files` with `GATEWAY_STORE=nats`).

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
import time
from typing import Any

import orjson

from gateway.names import is_valid_name
from gateway.store.nats import layout
from gateway.store.nats.compact import Subjects, epoch_marker
from gateway.store.nats.conn import Conflict, NatsConn


class SessionDirectory:
    """The bucket of session entries: written by the store, read by the NATS catalog."""

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

    async def entries(self, project: str, names: list[str]) -> list[tuple[str, dict[str, Any]]]:
        """(name, entry) of those of `names` (in that order) whose entry exists and is a JSON object."""
        got = {s.headers.get("Nats-Subject", ""): s for s in
               await self.conn.last_of(self.stream, [self.subject(project, n) for n in names])}
        out = []
        for name in names:
            stored = got.get(self.subject(project, name))
            if stored is None:
                continue
            try:
                entry: Any = orjson.loads(stored.data)
            except orjson.JSONDecodeError:
                continue
            if isinstance(entry, dict):
                out.append((name, entry))
        return out

