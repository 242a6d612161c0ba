"""The file store: one append-only JSONL log per session, in the platform backend's layout.

The store finds session folders (`layout.py`), opens each session's `FileLog` (`filelog.py`) on
first use and keeps it cached until the sweeper evicts it. Module map of the store:

    base.py      the contract: `EventLog`, errors, `AppendResult`
    layout.py    file names, meta.json I/O, legacy file reading
    fds.py       descriptor primitives (no-follow opens, whole writes, flock, shared reads)
    state.py     what readers may see of a log, without I/O (`LogState`)
    filelog.py   the driver of one log: appends, group commit, classification, recovery
    index.py, lines.py, cursor.py, legacy.py   pure formats and rules
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import anyio
import anyio.to_thread

from gateway.clock import now_ms
from gateway.store.base import ProjectMismatch, SessionLog, SessionNotFound, StoreError
from gateway.store.commit import CommitCycle
from gateway.store.cursor import new_epoch
from gateway.store.filelog import FileLog
from gateway.store.layout import claim_meta, create_meta, keep_last_seen, read_meta
from gateway.store.opening import OpenOnce

log = logging.getLogger("gateway.store")


class FileStore:
    """Session folders under `<root>/sessions`, with their logs opened on demand and cached."""

    def __init__(self, root: Path, *, fsync: bool, max_event_bytes: int, max_open_logs: int = 1000,
                 commits: CommitCycle | None = None) -> None:
        self.root = root
        self.sessions_dir = root / "sessions"
        self._fsync = fsync
        self._max = max_event_bytes
        self._open: OpenOnce[FileLog] = OpenOnce()
        self._logs = self._open.logs
        self.max_open_logs = max_open_logs
        self._holding: OrderedDict[str, FileLog] = OrderedDict()  # may hold descriptors; least recent first
        self.commits = commits or CommitCycle()  # one for every log: syncs are shared across sessions
        self.on_append: Callable[[SessionLog, list[bytes], float], None] | None = None  # every path

    @property
    def on_fsync(self) -> Callable[[float], None] | None:
        """Told the seconds of each commit cycle's sync call."""
        return self.commits.on_sync

    @on_fsync.setter
    def on_fsync(self, hook: Callable[[float], None] | None) -> None:
        self.commits.on_sync = hook

    def ensure_root(self) -> None:
        self.sessions_dir.mkdir(parents=True, exist_ok=True)

    @property
    def logs(self) -> dict[str, FileLog]:
        return self._logs

    def session_dir(self, session: str) -> Path:
        """The folder of a session; the name was checked, and a symlinked folder is refused."""
        path = self.sessions_dir / session
        if path.is_symlink():
            raise SessionNotFound(f"session {session!r} is a symbolic link; refusing to follow it")
        return path

    async def open(self, project: str, session: str, *, create: bool, claim: bool = False) -> FileLog:
        """The session's log, loading it on first use; `create` makes the session if missing.

        A legacy folder no project has claimed (`project` None) is returned as it is, for the
        caller to serve or hide, unless this is a write (`create` or `claim`): then `project` claims it.
        """
        cached = self._logs.get(session) or await self._open.get(session, lambda: self._load(project, session, create))
        if cached.project is None:  # claimed by this write, or since by another process?
            claimant = project if create or claim else None
            cached.project = cached.meta["project"] = await anyio.to_thread.run_sync(claim_meta, cached.dir, claimant)
            if claimant is not None and cached.project == claimant:
                log.info("claimed legacy session", extra={"session": session, "project": claimant})
        if cached.project is not None and cached.project != project:
            raise ProjectMismatch(f"session {session!r} belongs to project {cached.project!r}, not {project!r}",
                                  cached.project)
        self._hold(session, cached)
        return cached

    def _hold(self, session: str, flog: FileLog) -> None:
        """Mark `flog` as just used; past `max_open_logs`, the least recently used logs that no
        append is using release their descriptors (they reopen them when next needed), so a
        flood of new sessions cannot exhaust the process's descriptors."""
        holding = self._holding
        holding[session] = flog
        holding.move_to_end(session)
        for _ in range(len(holding)):
            if len(holding) <= self.max_open_logs:
                return
            name, oldest = next(iter(holding.items()))
            if oldest.writing():
                holding.move_to_end(name)  # its append needs its descriptors: the next one goes
            else:
                del holding[name]
                oldest.close()

    async def _load(self, project: str, session: str, create: bool) -> FileLog:
        path = self.session_dir(session)
        meta = await anyio.to_thread.run_sync(read_meta, path)
        if meta is None:
            if not path.is_dir():
                if not create:
                    raise SessionNotFound(f"no session {session!r} in project {project!r}")
                path.mkdir(parents=True, exist_ok=True)  # another process may be creating it too
            # A legacy folder (no meta.json) gets its epoch now, and an owner only with a write.
            meta = {"project": project if create else None, "epoch": new_epoch(), "createdAt": now_ms()}
            meta = await anyio.to_thread.run_sync(create_meta, path, meta)
        if meta["project"] is not None and meta["project"] != project:
            raise ProjectMismatch(f"session {session!r} belongs to project {meta['project']!r}, not {project!r}",
                                  meta["project"])
        flog = FileLog(path, meta, fsync=self._fsync, max_event_bytes=self._max, commits=self.commits,
                       on_append=self.on_append)
        await flog.load()
        return flog

    def keep_last_seen(self, seen: list[tuple[str, str, int]]) -> None:
        """Write sessions' lastSeen into their meta.json (blocking: the registry runs it in a thread)."""
        for project, session, last_seen in seen:
            try:
                keep_last_seen(self.session_dir(session), project, last_seen)
            except (OSError, StoreError) as exc:
                log.warning("lastSeen not kept", extra={"session": session, "error": str(exc)})

    def evict(self, session: str) -> str:
        """Drop a session's cached state (descriptors, index): "evicted", "absent" or "busy" (in use)."""
        flog = self._logs.get(session)
        if flog is None:
            return "absent"
        if flog.busy():
            return "busy"
        del self._logs[session]
        self._holding.pop(session, None)
        flog.close()
        return "evicted"

    async def poll_all(self) -> None:
        for flog in list(self._logs.values()):
            if flog.waiters:
                await flog.poll()

    def close(self) -> None:
        for flog in self._logs.values():
            flog.close()
        self._logs.clear()
        self._holding.clear()
