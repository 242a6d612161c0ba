"""Session logs in NATS JetStream (`GATEWAY_STORE=nats`): opened on demand, cached, followed.

An open log follows its subject's change notices (headers republished by JetStream once a message
is stored), so followers on this replica see appends made through any other at once; the poll
loop catches up on notices lost while NATS was unreachable, and compacts the logs this replica
appended to (compact.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from gateway.store.base import ProjectMismatch, SessionLog, SessionNotFound, StoreError
from gateway.store.nats import layout
from gateway.store.nats.conn import NatsConn
from gateway.store.nats.log import NatsLog
from gateway.store.nats.sessions import SessionDirectory
from gateway.store.opening import OpenOnce

log = logging.getLogger("gateway.store.nats")


class NatsStore:
    """The `LogStore` over one JetStream stream; the state dir only holds local side files."""

    def __init__(self, conn: NatsConn, root: Path) -> None:
        self.conn = conn
        self.root = root
        self.directory = SessionDirectory(conn)
        self._open: OpenOnce[NatsLog] = OpenOnce()
        self._logs = self._open.logs
        self._subs: dict[str, Subscription] = {}
        self._retired: list[Subscription] = []
        self.on_fsync: Callable[[float], None] | None = None  # JetStream syncs; kept for the interface
        self.on_append: Callable[[SessionLog, list[bytes], float], None] | None = None

    def ensure_root(self) -> None:
        """Local folders only: side files, and the (empty) sessions folder readiness checks."""
        (self.root / "nats-cache").mkdir(parents=True, exist_ok=True)
        (self.root / "sessions").mkdir(parents=True, exist_ok=True)

    @property
    def logs(self) -> dict[str, NatsLog]:
        return self._logs

    async def open(self, project: str, session: str, *, create: bool, claim: bool = False) -> NatsLog:
        """`claim` is for the files store's legacy folders: every NATS session has its project."""
        cached = await self._open.get(session, lambda: self._load(project, session, create))
        if cached.project != project:
            raise ProjectMismatch(f"session {session!r} belongs to project {cached.project!r}, not {project!r}",
                                  cached.project)
        return cached

    async def _load(self, project: str, session: str, create: bool) -> NatsLog:
        nlog = NatsLog(self.conn, session, self.root / "nats-cache" / session, on_append=self.on_append)
        await nlog.poll()
        if not nlog.exists:
            if not create:
                raise SessionNotFound(f"no session {session!r} in project {project!r}")
            await nlog.create(project)
        if not nlog.exists:
            raise StoreError(f"session {session!r} could not be created")
        await self.directory.ensure(nlog.project, session, nlog.created_ms)

        async def notice(msg: Msg) -> None:
            headers = msg.headers or {}
            placed = layout.placed(int(headers.get("Nats-Sequence", 0)), headers, int(headers.get("Nats-Msg-Size", 0)))
            if placed is not None:
                nlog.apply(placed)  # a lost notice leaves no hole: reads find messages by offset

        self._subs[session] = await self.conn.subscribe(layout.notice_subject(self.conn.stream, session), notice)
        return nlog

    def evict(self, session: str) -> str:
        nlog = self._logs.get(session)
        if nlog is None:
            return "absent"
        if nlog.busy():
            return "busy"
        del self._logs[session]
        sub = self._subs.pop(session, None)
        if sub is not None:
            self._retired.append(sub)  # unsubscribed by the next poll (this runs outside the loop's awaits)
        return "evicted"

    async def poll_all(self) -> None:
        while self._retired:
            try:
                await self._retired.pop().unsubscribe()
            except Exception as exc:  # a closed connection drops its subscriptions anyway
                log.debug("unsubscribe failed", extra={"error": str(exc)})
        now = int(time.time() * 1000)
        for nlog in list(self._logs.values()):
            if nlog.compaction_due(now):
                try:
                    await nlog.compact()
                except StoreError as exc:
                    log.warning("compaction failed", extra={"session": nlog.session, "error": str(exc)})
        for nlog in list(self._logs.values()):
            if nlog.waiters:
                try:
                    await nlog.refresh()
                except StoreError:
                    return  # NATS is away: followers keep what they have until it is back

    def close(self) -> None:
        self._logs.clear()
        self._subs.clear()
        self._retired.clear()
