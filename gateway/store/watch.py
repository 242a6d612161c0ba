"""Wakes followers when another process appends to a log they follow.

The gateway's own appends wake its followers directly; appends made by another process (a
second worker, another gateway on a shared volume, any writer that takes the log's flock) are
only seen by looking at the file. inotify tells at once (about 0.3 ms here); a stat poll every
`GATEWAY_POLL_INTERVAL` is the fallback where inotify is missing, fails, or cannot see the
writes at all (network filesystems: NFS, CIFS, Ceph, FUSE mounts see only this host's writes).

Only logs that have followers in this process are watched: per session, the folder (for the
log's creation, replacement and deletion) and the log file (for its growth). The set is brought
up to date every `WATCH_TICK`; a newly watched log is polled once right away, so nothing
appended before its watch existed is missed (a new follower's first tick may wait for it).
A log whose watch cannot be added (watch limit reached) is stat-polled every interval instead.
Every wake-up goes through `FileLog.poll`, which reads from where the gateway stopped, so
coalesced or spurious events cost one stat. One loop reader on the inotify descriptor, for the
watcher's whole life, takes in every queued event per wake-up (`inotify.py`); the sessions they
name are polled together, each once however many events it had. If the kernel's event queue
overflows (events lost), every watched log is watched afresh and polled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import anyio

from gateway.store.base import LogStore
from gateway.store.filelog import FileLog
from gateway.store.files import FileStore
from gateway.store.inotify import (
    DRAINED,
    IN_ATTRIB,
    IN_CREATE,
    IN_DELETE,
    IN_IGNORED,
    IN_MODIFY,
    IN_MOVED_FROM,
    IN_MOVED_TO,
    IN_ONLYDIR,
    IN_Q_OVERFLOW,
    Inotify,
    parse_events,
)
from gateway.store.layout import LOG_NAME

log = logging.getLogger("gateway.watch")

WATCH_TICK = 0.1
"""Seconds between updates of the set of watched logs (no system call unless the set changes)."""

WATCH_LINGER = 2.0
"""Seconds a log stays watched after its last waiter. Followers riding a session's hub do not
wait on the log while the hub writes to them, so a busy log often has no waiter at a tick:
dropping its watch there would cost a remove, an add and a poll per tick, and leave appends by
other processes unseen until the next tick."""

NETWORK_FILESYSTEMS = frozenset({
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "ceph", "glusterfs", "9p", "lustre", "gpfs", "afs", "beegfs",
    "virtiofs",
})
"""Filesystems whose writes from other hosts inotify never reports: `auto` polls these."""

DIR_MASK = IN_CREATE | IN_MOVED_TO | IN_DELETE | IN_MOVED_FROM | IN_ONLYDIR
"""A session folder's watch: the log created, replaced or removed (events name the entry)."""
LOG_MASK = IN_MODIFY | IN_ATTRIB
"""A log file's watch: it grew (or was truncated), or its links or metadata changed."""
_LOG_NAME = os.fsencode(LOG_NAME)


def mount_fstype(path: Path, mountinfo: str) -> str | None:
    """The filesystem type of the mount holding `path` (the longest matching mount point)."""
    best, fstype = -1, None
    resolved = str(path)
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        fields = left.split()
        if not sep or len(fields) < 5:
            continue
        point = fields[4].replace("\\040", " ")
        inside = resolved == point or resolved.startswith(point.rstrip("/") + "/")
        if inside and len(point) > best:
            best, fstype = len(point), right.split()[0]
    return fstype


def needs_polling(fstype: str | None) -> bool:
    return fstype is not None and (fstype in NETWORK_FILESYSTEMS or fstype.startswith("fuse"))


@dataclass
class _Watched:
    log: FileLog
    wds: list[int] = field(default_factory=list)  # the folder's watch, then the log file's
    used: float = 0.0  # when it last had a waiter


class LogWatcher:
    """`mode`: `inotify`, `poll`, or `auto` (inotify unless the state dir is on a network filesystem).

    Stores other than the file store (NATS) are always polled: `poll_all` is how they take in
    what other replicas did."""

    def __init__(self, store: LogStore, *, mode: str, interval: float) -> None:
        self.store = store
        self.mode = mode
        self.interval = interval
        self.using = "poll"
        self._watched: dict[str, _Watched] = {}
        self._by_wd: dict[int, str] = {}
        self._pending: set[str] = set()
        self._unwatchable: set[str] = set()
        self._wake = anyio.Event()
        self._overflowed = False

    async def run(self) -> None:
        if self.mode != "poll" and isinstance(self.store, FileStore) and self._inotify_fits(self.store):
            try:
                inotify = Inotify()
            except (OSError, AttributeError) as exc:  # no inotify on this platform or kernel
                log.warning("inotify unavailable; polling for appends by other processes",
                            extra={"error": str(exc), "interval": self.interval})
            else:
                with inotify:
                    self.using = "inotify"
                    await self._run_inotify(inotify, self.store)
                return
        self.using = "poll"
        await self._run_poll()

    def _inotify_fits(self, store: FileStore) -> bool:
        if self.mode == "inotify":
            return True
        try:
            mountinfo = Path("/proc/self/mountinfo").read_text()
        except OSError:
            return True
        fstype = mount_fstype(store.root.resolve(), mountinfo)
        if needs_polling(fstype):
            log.info("state dir on a network filesystem: polling for appends by other processes",
                     extra={"fstype": fstype, "interval": self.interval})
            return False
        return True

    async def _run_poll(self) -> None:
        while True:
            await anyio.sleep(self.interval)
            try:
                await self.store.poll_all()
            except Exception:
                log.exception("poll of session logs failed")

    async def _poll(self, logs: Iterable[FileLog], *, checked: bool = False) -> None:
        for flog in logs:
            try:
                await flog.poll(checked=checked)
            except Exception:
                log.exception("poll of a session log failed", extra={"session": flog.session})

    async def _run_inotify(self, inotify: Inotify, store: FileStore) -> None:
        loop = asyncio.get_running_loop()
        loop.add_reader(inotify.fd, self._take_events, inotify)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._deliver)
                next_poll = 0.0
                while True:
                    added, unwatchable = self._reconcile(inotify, store)
                    await self._poll(added)
                    if unwatchable and anyio.current_time() >= next_poll:
                        next_poll = anyio.current_time() + self.interval
                        await self._poll(unwatchable)
                    await anyio.sleep(WATCH_TICK)
        finally:
            loop.remove_reader(inotify.fd)

    def _reconcile(self, inotify: Inotify, store: FileStore) -> tuple[list[FileLog], list[FileLog]]:
        """Watch the logs that have followers, drop the rest. Returns the logs just watched (to
        poll once, for what came before their watch) and those inotify cannot watch (to poll)."""
        logs, now = store.logs, anyio.current_time()
        for w in self._watched.values():
            if w.log.waiters:
                w.used = now
        for session in [s for s, w in self._watched.items()
                        if logs.get(s) is not w.log or now - w.used >= WATCH_LINGER]:
            for wd in self._watched.pop(session).wds:
                self._by_wd.pop(wd, None)
                with contextlib.suppress(OSError):
                    inotify.rm_watch(wd)
        added: list[FileLog] = []
        unwatchable: list[FileLog] = []
        for session, flog in list(logs.items()):
            if not flog.waiters or session in self._watched:
                continue
            try:
                wds = [inotify.add_watch(flog.dir, DIR_MASK)]
                with contextlib.suppress(FileNotFoundError):  # no log yet: the folder's CREATE says when
                    wds.append(inotify.add_watch(flog.path, LOG_MASK))
            except OSError as exc:
                if session not in self._unwatchable:
                    log.warning("cannot watch a session log; polling it", extra={"session": session, "error": str(exc)})
                self._unwatchable.add(session)
                unwatchable.append(flog)
                continue
            self._unwatchable.discard(session)
            self._watched[session] = _Watched(flog, wds, now)
            for wd in wds:
                self._by_wd[wd] = session
            added.append(flog)
        return added, unwatchable

    def _take_events(self, inotify: Inotify) -> None:
        """The loop reader: every event queued marks its session pending; one wake-up for all."""
        while True:
            buf = inotify.read()
            for wd, mask, name in parse_events(buf):
                if mask & IN_Q_OVERFLOW:
                    self._overflow(inotify)
                    continue
                session = self._by_wd.get(wd)
                if session is None:
                    continue
                if mask & IN_IGNORED:  # the watched file is gone; its folder's event follows
                    self._forget(session, wd)
                    continue
                if name:  # a folder event: only the log's own name matters
                    if name != _LOG_NAME:
                        continue
                    self._rewatch_log(inotify, session)
                self._pending.add(session)
            if len(buf) <= DRAINED:  # the queue is empty; events queued from now on fire the reader again
                break
        # Most events are our own appends, which a stat shows taken in already: the task's turn
        # and the poll's coroutine are for the others.
        self._pending = {s for s in self._pending if _may_have_changed(self._watched.get(s))}
        if self._pending:
            self._wake.set()

    def _overflow(self, inotify: Inotify) -> None:
        """Events were lost, perhaps a log's creation or replacement too: watch every log's
        current file and poll them all."""
        if not self._overflowed:
            self._overflowed = True
            log.warning("inotify event queue overflowed; polling every watched log (raise "
                        "fs.inotify.max_queued_events if this recurs)", extra={"watched": len(self._watched)})
        for session in self._watched:
            self._rewatch_log(inotify, session)
            self._pending.add(session)

    def _forget(self, session: str, wd: int) -> None:
        """The kernel dropped watch `wd` (its file is gone): nothing is left to remove."""
        del self._by_wd[wd]
        watched = self._watched.get(session)
        if watched is not None and wd in watched.wds:
            watched.wds.remove(wd)

    def _rewatch_log(self, inotify: Inotify, session: str) -> None:
        """The log was created, replaced or removed: watch whatever file the path names now."""
        watched = self._watched.get(session)
        if watched is None:
            return
        with contextlib.suppress(OSError):
            wd = inotify.add_watch(watched.log.path, LOG_MASK)
            if wd not in self._by_wd:
                watched.wds.append(wd)
                self._by_wd[wd] = session

    async def _deliver(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = anyio.Event()
            pending, self._pending = self._pending, set()
            # the reader's check found these changed: their polls need not stat again before the lock
            await self._poll((w.log for s in pending if (w := self._watched.get(s)) is not None), checked=True)


def _may_have_changed(watched: _Watched | None) -> bool:
    """The reader's check before a poll; one that fails leaves the poll to report it."""
    if watched is None:
        return True
    try:
        return watched.log.changed()
    except OSError:
        return True
