"""The descriptors of one session's log: the shared read handle, the write descriptor, the index.

Each is opened on first use, released by `close` (the sweeper's eviction) and opened again when
needed, so a `FileLog` stays usable by whoever still holds it.

The index header's `end`/`lines` (how far the log is classified) are rewritten at most every
`HEADER_EVERY` seconds while a log is appended to, and on close: a commit cycle's `syncfs` writes
back every dirty page of the filesystem, and a header dirtied by each cycle doubled the pages it
wrote (1.3 against 2.7 ms per cycle for 200 logs, measured). Nothing depends on a fresh header
but the check, at load, that the log did not shrink while no gateway had it open; after a crash
it compares against the end the log had at most `HEADER_EVERY` seconds before its last append. An append's
`pending_*` mark, which a crash's rollback needs, is written at once.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from pathlib import Path
from types import TracebackType

from gateway.store.base import DiskFull, StoreError
from gateway.store.fds import (
    DISK_FULL,
    ReadHandle,
    copy_range,
    fsync_dir,
    newline_before,
    open_nofollow,
    truncate,
    try_flock,
    verified_records,
)
from gateway.store.index import DIRTY, Header, IndexFile
from gateway.store.layout import INDEX_NAME, LOG_NAME
from gateway.store.lines import INDEX_EVERY, scan_lines
from gateway.store.state import IndexRecord, LogState

log = logging.getLogger("gateway.store")

HEADER_EVERY = 1.0
"""Seconds between two rewrites of a log's index header that only move its `end`."""


class LogFiles:
    def __init__(self, session_dir: Path) -> None:
        self.dir = session_dir
        self.path = session_dir / LOG_NAME
        self.rh: ReadHandle | None = None
        self.wfd: int | None = None
        self.device = 0  # the filesystem of the write descriptor's file (the commit cycle syncs per filesystem)
        self.header = Header()
        self._idx: IndexFile | None = None
        self._header_due = 0.0  # monotonic time from which a moved `end` is written at once
        self._header_stale = False  # the header in the file is behind `header`

    @property
    def index(self) -> IndexFile:
        if self._idx is None:
            self._idx = IndexFile(str(self.dir / INDEX_NAME))
        return self._idx

    def stat(self) -> os.stat_result | None:
        """The log file itself (a link is not followed), or None when there is none."""
        try:
            return os.stat(self.path, follow_symlinks=False)
        except FileNotFoundError:
            return None

    def read_handle(self) -> ReadHandle | None:
        """The read handle, reopened if `close` released it (the state it describes is still
        valid), unless another file took the log's name meanwhile: `poll`, which readers call on
        b"", then starts a new epoch."""
        if self.rh is None:
            self.reopen_read()
            if self.rh is not None and self.rh.inode != self.header.inode:
                self.rh.retire()
                self.rh = None
        return self.rh

    async def load(self, state: LogState, max_event_bytes: int, session: str) -> tuple[bool, str] | None:
        """Restore `state` from the index, as far as the log confirms it; roll back an append that a
        crash interrupted. Returns (new epoch?, why) when the log must start over instead."""
        header, records = self.index.load()
        st = self.stat()
        if st is None:
            return (header is not None and header.end > 0), "log is gone"
        self.reopen_read()
        if header is None or header.epoch != state.epoch or not header.inode:
            # No index yet (an existing volume), or one written while there was no log: another
            # process (a worker, a gateway on the same volume) created the log since, in this epoch.
            header, records = Header(st.st_ino, state.epoch), []
        elif header.inode != st.st_ino:
            return True, "log file was replaced"
        if header.pending_end:
            self.recover_pending(header, st.st_size, session)
            st = os.stat(self.path, follow_symlinks=False)
        if st.st_size < header.end:
            return True, f"log shrank from {header.end} to {st.st_size} bytes"
        assert self.rh is not None
        offsets = [off for off, _ in records]
        del records[await self.rh.in_thread(verified_records, offsets, st.st_size):]
        self.header = header
        self.index.truncate_records(len(records))
        # Resume classification at the last index point: the lines after it are re-checked,
        # at most INDEX_EVERY of them, so no claim about them needs to be trusted.
        state.restore([off for off, _ in records])
        for k, (_, flags) in enumerate(records):
            if flags & DIRTY:  # this block holds bad lines: find them, so readers can skip them
                start = state.records[k - 1] if k else 0
                data = os.pread(self.rh.fd, state.records[k] - start, start)
                for bad in scan_lines(data, start, k * INDEX_EVERY + 1, max_event_bytes).bad:
                    state.add_bad(bad)
        return None

    def known_inode(self) -> int | None:
        """The inode of the file this log describes (also while its descriptors are released)."""
        if self.rh is not None:
            return self.rh.inode
        return self.header.inode or None

    def reopen_read(self) -> None:
        """Point the shared read handle at the file now at `path` (none if there is no log)."""
        if self.rh is not None:
            self.rh.retire()
        try:
            self.rh = ReadHandle(self.path)
        except FileNotFoundError:
            self.rh = None

    def open_write(self) -> int:
        """The write descriptor, creating the log (and making its name durable) if needed."""
        if self.wfd is None:
            created = not self.path.exists()
            self.wfd = open_nofollow(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
            if created:
                fsync_dir(self.dir)
            st = os.fstat(self.wfd)
            if self.rh is None or self.rh.inode != st.st_ino:
                self.reopen_read()
            self.header.inode, self.device = st.st_ino, st.st_dev
        return self.wfd

    def write_index(self, new: list[IndexRecord], state: LogState) -> None:
        """Persist what the state just published: new index points, then the header (see the
        module's docstring for when)."""
        for k, offset, flags in new:
            self.index.write_record(k, offset, flags)
        header = self.header
        header.end, header.lines = state.end, state.lines
        now = bool(new)
        if header.pending_end and header.pending_end <= state.end:  # the append in flight is published
            header.pending_start = header.pending_end = 0
            now = True
        if now or time.monotonic() >= self._header_due:
            self._publish_header()
        else:
            self._header_stale = True

    def _publish_header(self) -> None:
        """Write the header unless another writer holds the log's flock (then later: stale).

        This process's header carries no mark of another process's append; written while that
        append is in flight, it would drop the mark a crash's rollback needs. (Our own append's
        write releases the flock before it publishes.)"""
        fd = None if self.rh is None else self.rh.fd
        if fd is None or not try_flock(fd):
            self._header_stale = True
            return
        try:
            self._write_header()
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    def _write_header(self) -> None:
        self.index.write_header(self.header)
        self._header_due, self._header_stale = time.monotonic() + HEADER_EVERY, False

    def flocked(self, written_end: int) -> int | None:
        """The write descriptor with the log's flock held, when that takes no wait and the file
        is as our last append left it, `written_end` long (one fstat); the caller releases it."""
        fd = self.wfd
        if fd is not None and try_flock(fd):
            st = os.fstat(fd)
            if st.st_nlink and st.st_size == written_end:
                return fd
            fcntl.flock(fd, fcntl.LOCK_UN)
        return None

    def appending(self, fd: int, start: int, data: bytes, lines: int) -> Appending:
        """Around the write of one append's `data` at `start` (yielded), under the log's flock on
        `fd`, released at the end. Several lines are marked in flight first; a write that fails is
        cut off again, all or nothing, and raises DiskFull or StoreError."""
        return Appending(self, fd, start, len(data), lines)

    def mark_pending(self, start: int, end: int) -> None:
        """Record the range of the append about to be written, so a crash can roll it back if it
        is not whole; the header write that publishes it clears the mark (`write_index`)."""
        self.header.pending_start, self.header.pending_end = start, end
        self._write_header()

    def recover_pending(self, header: Header, size: int, session: str) -> None:
        """An append was in flight when the process died: keep it only if it is whole."""
        assert self.rh is not None
        start, end = header.pending_start, header.pending_end
        if not (size >= end and newline_before(self.rh.fd, end, size)) and size > start:
            self.set_aside(start, size, "interrupted append", session)
            truncate(self.path, start)
        header.pending_start = header.pending_end = 0

    def set_aside(self, start: int, stop: int, why: str, session: str) -> None:
        """Copy bytes that are about to be cut off the log to a side file: nothing is lost."""
        assert self.rh is not None
        aside = self.dir / f"{LOG_NAME}.torn-{start}"
        copy_range(self.rh.fd, start, stop, aside)
        log.warning("cut torn tail", extra={"session": session, "bytes": stop - start, "why": why, "saved": str(aside)})

    def reset(self, epoch: str) -> None:
        """The log starts over under `epoch`: descriptors of the old file go, the index is emptied."""
        if self.wfd is not None:
            os.close(self.wfd)  # an fsync in flight holds a duplicate of its own
            self.wfd = None
        self.reopen_read()
        self.header = Header(self.rh.inode if self.rh else 0, epoch)
        self.index.reset(self.header)
        self._header_stale = False

    def close(self) -> None:
        if self._idx is not None:
            try:
                if self._header_stale:
                    self._publish_header()  # before the read handle goes: its flock is taken through it
            except OSError as exc:  # a cache: the next load checks the log against an older end
                log.warning("index header not written", extra={"path": self._idx.path, "error": str(exc)})
            finally:
                self._idx.close()
                self._idx = None
        if self.wfd is not None:
            os.close(self.wfd)
            self.wfd = None
        if self.rh is not None:
            self.rh.retire()
            self.rh = None


class Appending:
    """`LogFiles.appending`: a class, not a generator, as it runs once per append (a generator's
    context manager cost 3 us of the ~40 an append spends on the event loop)."""

    __slots__ = ("fd", "files", "lines", "size", "start")

    def __init__(self, files: LogFiles, fd: int, start: int, size: int, lines: int) -> None:
        self.files, self.fd, self.start, self.size, self.lines = files, fd, start, size, lines

    def __enter__(self) -> int:
        if self.lines > 1:  # a part of one line written is a torn tail, invisible: no mark needed
            try:
                self.files.mark_pending(self.start, self.start + self.size)
            except BaseException:
                fcntl.flock(self.fd, fcntl.LOCK_UN)
                raise
        return self.start

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        try:
            if isinstance(exc, OSError):
                os.ftruncate(self.fd, self.start)
                if exc.errno in DISK_FULL:
                    raise DiskFull(f"no space left to append {self.size} bytes; nothing was written") from exc
                raise StoreError(f"append failed: {exc.strerror}; nothing was written") from exc
        finally:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
