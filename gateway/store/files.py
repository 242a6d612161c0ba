"""The file store: one append-only JSONL log per session, in the platform backend's layout.

    <root>/sessions/<session>/agui-events.jsonl   the log (PROTOCOL §1)
    <root>/sessions/<session>/agui-events.idx     sparse index + header (see `index.py`)
    <root>/sessions/<session>/meta.json           owning project, epoch, creation time

A `FileLog` keeps, for its session, how far the log is *classified*: `end` (bytes) and `lines`.
Everything below `end` is whole lines whose fate is known (deliverable, or a `BadLine`), so readers
never parse anything and a torn tail is invisible by construction. Lines the gateway appends are
validated on the way in; lines another process wrote are classified once, when they are noticed.
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import fcntl
import logging
import os
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import anyio.to_thread
import orjson

from gateway.store.base import AppendResult, DiskFull, ProjectMismatch, SessionNotFound, SessionReset, StoreError
from gateway.store.cursor import is_epoch, new_epoch
from gateway.store.index import DIRTY, Header, IndexFile
from gateway.store.legacy import LegacyConversion, convert_legacy, is_migration_snapshot, snapshot_event
from gateway.store.lines import (
    INDEX_EVERY,
    BadLine,
    SkipReason,
    classify,
    index_points_of,
    is_index_seq,
    scan_lines,
)

log = logging.getLogger("gateway.store")

LOG_NAME = "agui-events.jsonl"
INDEX_NAME = "agui-events.idx"
META_NAME = "meta.json"
LEGACY_NAME = "messages.jsonl"
SCAN_CHUNK = 1 << 20
RECENT_BYTES = 64 * 1024
"""Bytes of its latest appends a log keeps in memory: followers at the live edge read them from
there instead of from the file, once per event instead of once per event per follower."""
_THREAD_WRITE_MIN = 256 * 1024
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_NOWAIT: int = getattr(os, "RWF_NOWAIT", 0)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


FLOCK_PATIENCE = 10.0
"""Seconds an append waits for another writer's flock before it fails (503-like StoreError)."""


async def _flock(fd: int) -> None:
    """Take the exclusive flock without blocking the event loop."""
    try:
        with anyio.fail_after(FLOCK_PATIENCE):
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return
                except BlockingIOError:
                    await anyio.sleep(0.001)
    except TimeoutError:
        raise StoreError(f"the log is locked by another writer for over {FLOCK_PATIENCE:g}s") from None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _convert_file(path: Path) -> LegacyConversion:
    with open(path, "rb") as fh:
        return convert_legacy(fh)


def read_meta(session_dir: Path) -> dict[str, Any] | None:
    try:
        raw = (session_dir / META_NAME).read_bytes()
    except FileNotFoundError:
        return None
    try:
        meta = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise StoreError(f"corrupt {session_dir / META_NAME}: {exc}") from exc
    if not isinstance(meta, dict) or not isinstance(meta.get("project"), str):
        raise StoreError(f"corrupt {session_dir / META_NAME}: no project")
    if not isinstance(meta.get("epoch"), str) or not is_epoch(meta["epoch"]):
        meta["epoch"] = new_epoch()
    return meta


def write_meta(session_dir: Path, meta: dict[str, Any]) -> None:
    """Atomic replace: a crash leaves the old meta or the new one."""
    tmp = session_dir / f".{META_NAME}.tmp"
    with open(tmp, "wb") as fh:
        fh.write(orjson.dumps(meta, option=orjson.OPT_INDENT_2))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, session_dir / META_NAME)
    _fsync_dir(session_dir)


class _ReadHandle:
    """A read-only descriptor shared by every reader of a log (pread needs no file position).

    Retired when the log is replaced; closed only once no read is using it.
    """

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        self.inode = os.fstat(self.fd).st_ino
        self.nowait = _NOWAIT
        self.users = 0
        self.retired = False

    async def pread(self, size: int, offset: int, *, partial: bool = False) -> bytes:
        """Read at `offset`; with `partial`, fewer bytes than asked may come back (never none before EOF).

        Data in the page cache is read on the event loop (RWF_NOWAIT never blocks on the disk);
        anything else goes to a worker thread. A thread hop costs more than reading 64 KiB from
        memory, so this keeps replay of a warm log close to the speed of the socket.
        """
        if partial and self.nowait:
            buf = bytearray(size)
            try:
                n = os.preadv(self.fd, [buf], offset, self.nowait)
            except BlockingIOError:
                n = -1
            except OSError:
                self.nowait = 0  # this filesystem cannot tell: use the thread for this file
                n = -1
            if n >= 0:
                return bytes(memoryview(buf)[:n])
        self.users += 1
        try:
            return await anyio.to_thread.run_sync(os.pread, self.fd, size, offset)
        finally:
            self.users -= 1
            if self.retired and self.users == 0:
                os.close(self.fd)

    def retire(self) -> None:
        if not self.retired:
            self.retired = True
            if self.users == 0:
                os.close(self.fd)


class _Commit:
    """Group-commit state of one incarnation of the log file (one epoch).

    An append keeps the incarnation it wrote into and waits on it alone. When the log gets a new
    epoch (DELETE, a file replaced or cut short behind our back) the old incarnation is retired:
    its `synced_to` is then final, so a waiter learns at once whether its events were fsynced
    into the old file, and can never wait on, or be released by, the new file's state.
    """

    __slots__ = ("retired", "synced_to", "syncing", "unsynced")

    def __init__(self, synced_to: int = 0) -> None:
        self.synced_to = synced_to
        self.syncing: anyio.Event | None = None  # set when the fsync in flight ends
        self.unsynced: deque[tuple[int, int, list[tuple[int, int]]]] = deque()  # (end, lines, index points)
        self.retired = False


class FileLog:
    """One session's log: appends (one writer, group fsync), classification, index, epoch."""

    def __init__(
        self, session_dir: Path, meta: dict[str, Any], *, fsync: bool, max_event_bytes: int,
        on_fsync: Callable[[float], None] | None = None,
        on_append: Callable[[int, float], None] | None = None,
    ) -> None:
        self.dir = session_dir
        self._on_fsync = on_fsync
        self._on_append = on_append
        self.session = session_dir.name
        self.project: str = meta["project"]
        self.meta = meta
        self.path = session_dir / LOG_NAME
        self._fsync = fsync
        self._max = max_event_bytes
        self._epoch: str = meta["epoch"]
        self._end = 0
        self._lines = 0
        self._version = 0
        self._written_end = 0
        self._written_lines = 0
        self._commit = _Commit()
        self._records: list[int] = []
        self._bad: dict[int, BadLine] = {}
        self._bad_seqs: list[int] = []
        self._header = Header()
        self._idx: IndexFile | None = None
        self._rh: _ReadHandle | None = None
        self._wfd: int | None = None
        self._recent: deque[tuple[int, bytes]] = deque()  # (offset, data) of the latest appends
        self._recent_bytes = 0
        self._lock = anyio.Lock()
        self._changed = anyio.Event()
        self.waiters = 0
        self.last_append_ms: int | None = None

    @property
    def _index(self) -> IndexFile:
        """The index file, opened on first use (again after `close`, which only releases descriptors)."""
        if self._idx is None:
            self._idx = IndexFile(str(self.dir / INDEX_NAME))
        return self._idx

    # -- what readers see -------------------------------------------------------------------

    @property
    def epoch(self) -> str:
        return self._epoch

    @property
    def end(self) -> int:
        return self._end

    @property
    def lines(self) -> int:
        return self._lines

    @property
    def version(self) -> int:
        return self._version

    @property
    def bad_lines(self) -> int:
        return len(self._bad_seqs)

    async def read(self, offset: int, size: int) -> bytes:
        """Some bytes at `offset`, at most `size`, never past `end`; b"" only at `end`."""
        size = min(size, self._end - offset)
        for start, data in reversed(self._recent):
            if start <= offset < start + len(data):
                return data[offset - start : offset - start + size]
            if start < offset:
                break
        if size > 0 and self._rh is None:
            self._reopen_read()  # released by `close`; the state it describes is still valid
        if size <= 0 or self._rh is None:
            return b""
        return await self._rh.pread(size, offset, partial=True)

    def next_bad(self, seq: int) -> BadLine | None:
        i = bisect.bisect_left(self._bad_seqs, seq)
        return self._bad[self._bad_seqs[i]] if i < len(self._bad_seqs) else None

    async def offset_of(self, seq: int) -> int:
        if not 1 <= seq <= self._lines + 1:
            raise ValueError(f"seq {seq} outside 1..{self._lines + 1}")
        if seq == self._lines + 1:
            return self._end
        k = (seq - 1) // INDEX_EVERY
        offset = self._records[k - 1] if k else 0
        skip = seq - (k * INDEX_EVERY + 1)
        epoch = self._epoch
        while skip:
            chunk = await self.read(offset, 256 * 1024)
            if not chunk or self._epoch != epoch:
                raise StoreError("log changed while seeking")
            pos = 0
            while skip:
                nl = chunk.find(b"\n", pos)
                if nl == -1:
                    break
                pos = nl + 1
                skip -= 1
            offset += pos if skip == 0 else len(chunk)
        return offset

    async def wait_change(self, version: int) -> None:
        while self._version == version:
            self.waiters += 1
            try:
                await self._changed.wait()
            finally:
                self.waiters -= 1

    def _notify(self) -> None:
        self._version += 1
        self._changed.set()
        self._changed = anyio.Event()

    # -- opening ----------------------------------------------------------------------------

    async def load(self) -> None:
        """Restore state from the index, recover an interrupted append, classify the rest."""
        async with self._lock:
            await self._load_index()
            await self._scan_tail()
            await self._migrate_legacy()

    async def _load_index(self) -> None:
        header, records = self._index.load()
        try:
            st = os.stat(self.path, follow_symlinks=False)
        except FileNotFoundError:
            self._start_over(header is not None and header.end > 0, "log is gone")
            return
        self._reopen_read()
        if header is None or header.epoch != self._epoch:
            header, records = Header(st.st_ino, self._epoch), []  # no index yet (existing volume)
        elif header.inode != st.st_ino:
            self._start_over(True, "log file was replaced")
            return
        if header.pending_end:
            self._recover_pending(header, st.st_size)
            st = os.stat(self.path)
        if st.st_size < header.end:
            self._start_over(True, f"log shrank from {header.end} to {st.st_size} bytes")
            return
        offsets = [off for off, _ in records]
        del records[await anyio.to_thread.run_sync(self._verified_records, offsets, st.st_size):]
        self._header = header
        self._records = [off for off, _ in records]
        self._index.truncate_records(len(records))
        # Resume classification at the last index point: the lines after it are re-checked,
        # at most INDEX_EVERY of them, so no claim about them needs to be trusted.
        self._end = self._written_end = self._records[-1] if records else 0
        self._commit.synced_to = self._end
        self._lines = self._written_lines = len(records) * INDEX_EVERY
        for k, (_, flags) in enumerate(records):
            if flags & DIRTY:
                self._rescan_block(k)

    def _verified_records(self, offsets: list[int], size: int) -> int:
        """How many leading index points really are where they claim (line (k+1)*INDEX_EVERY+1).

        One pass of newline counting up to the last point, at memory speed: an index left ahead
        of its log by a crash, or damaged, is cut where it stops holding, never trusted blindly.
        """
        assert self._rh is not None
        k, pos, lines_seen, last = 0, 0, 0, b"\n"
        stop = min(offsets[-1], size) if offsets else 0
        while k < len(offsets) and pos < stop:
            chunk = os.pread(self._rh.fd, min(4 * SCAN_CHUNK, stop - pos), pos)
            if not chunk:
                break
            end = pos + len(chunk)
            while k < len(offsets) and offsets[k] <= end:
                rel = offsets[k] - pos
                before = chunk[rel - 1 : rel] if rel > 0 else last
                if before != b"\n" or lines_seen + chunk.count(b"\n", 0, rel) != (k + 1) * INDEX_EVERY:
                    return k
                k += 1
            lines_seen += chunk.count(b"\n")
            pos, last = end, chunk[-1:]
        return k

    def _newline_before(self, offset: int, size: int) -> bool:
        assert self._rh is not None
        return 0 < offset <= size and os.pread(self._rh.fd, 1, offset - 1) == b"\n"

    def _recover_pending(self, header: Header, size: int) -> None:
        """An append was in flight when the process died: keep it only if it is whole."""
        start, end = header.pending_start, header.pending_end
        whole = size >= end and self._newline_before(end, size)
        if not whole and size > start:
            self._set_aside(start, size, "interrupted append")
            fd = os.open(self.path, os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
            try:
                os.ftruncate(fd, start)
            finally:
                os.close(fd)
        header.pending_start = header.pending_end = 0

    def _rescan_block(self, k: int) -> None:
        """Find the bad lines of index block k (flagged dirty), so readers can skip them."""
        assert self._rh is not None
        start = self._records[k - 1] if k else 0
        data = os.pread(self._rh.fd, self._records[k] - start, start)
        for bad in scan_lines(data, start, k * INDEX_EVERY + 1, self._max).bad:
            self._add_bad(bad)

    def _reopen_read(self) -> None:
        """Point the shared read handle at the file now at `path` (none if there is no log)."""
        if self._rh is not None:
            self._rh.retire()
        try:
            self._rh = _ReadHandle(self.path)
        except FileNotFoundError:
            self._rh = None

    def _start_over(self, new: bool, why: str) -> None:
        """Forget everything known about the log; with `new`, it gets a new epoch (PROTOCOL §2)."""
        if new:
            old, self._epoch = self._epoch, new_epoch()
            self.meta["epoch"] = self._epoch
            write_meta(self.dir, self.meta)
            log.warning(
                "new epoch", extra={"session": self.session, "old_epoch": old, "epoch": self._epoch, "why": why}
            )
        if self._wfd is not None:
            os.close(self._wfd)  # an fsync in flight holds a duplicate of its own
            self._wfd = None
        self._reopen_read()
        self._end = self._lines = self._written_end = self._written_lines = 0
        self._commit.retired = True
        self._commit = _Commit()
        self._recent.clear()
        self._recent_bytes = 0
        self._records = []
        self._bad.clear()
        self._bad_seqs = []
        self._header = Header(self._rh.inode if self._rh else 0, self._epoch)
        self._index.reset(self._header)
        self._notify()

    def _set_aside(self, start: int, stop: int, why: str) -> None:
        """Copy bytes that are about to be cut off the log to a side file: nothing is lost."""
        aside = self.dir / f"{LOG_NAME}.torn-{start}"
        assert self._rh is not None
        with open(aside, "ab") as fh:
            for pos in range(start, stop, SCAN_CHUNK):  # a torn tail can be any size: copy it in chunks
                fh.write(os.pread(self._rh.fd, min(SCAN_CHUNK, stop - pos), pos))
        log.warning(
            "cut torn tail", extra={"session": self.session, "bytes": stop - start, "why": why, "saved": str(aside)}
        )

    # -- classification of lines the gateway did not write itself -------------------------

    async def _scan_tail(self) -> None:
        """Classify whole lines between `end` and EOF, publishing as it goes (caller holds the lock)."""
        while self._rh is not None:
            pos, seq = self._written_end, self._written_lines + 1
            chunk = await self._rh.pread(SCAN_CHUNK, pos)
            cut = chunk.rfind(b"\n")
            if cut >= 0:
                scan = scan_lines(chunk[: cut + 1], pos, seq, self._max)
                self._publish_foreign(cut + 1, scan.lines, scan.bad, scan.index_points)
                continue
            if len(chunk) < SCAN_CHUNK:
                return  # EOF, possibly with a torn tail: invisible until whole
            length = await anyio.to_thread.run_sync(self._measure_line, pos)
            if length is None:
                return
            reason: SkipReason | None = "oversize"
            if length <= self._max:
                reason = classify(await self._rh.pread(length, pos), self._max)
            bad = [BadLine(seq, pos, length, reason)] if reason else []
            points = [(seq, pos)] if is_index_seq(seq) else []
            self._publish_foreign(length + 1, 1, bad, points)

    def _measure_line(self, offset: int) -> int | None:
        """Length of the line at `offset` without holding it in memory; None if it has no end yet."""
        assert self._rh is not None
        pos = offset
        while True:
            chunk = os.pread(self._rh.fd, SCAN_CHUNK, pos)
            if not chunk:
                return None
            nl = chunk.find(b"\n")
            if nl >= 0:
                return pos + nl - offset
            pos += len(chunk)

    def _publish_foreign(self, nbytes: int, nlines: int, bad: list[BadLine], points: list[tuple[int, int]]) -> None:
        for b in bad:
            self._add_bad(b)
        self._written_end += nbytes
        self._written_lines += nlines
        self._commit.synced_to = self._written_end
        self._publish(self._written_end, self._written_lines, points)

    def _add_bad(self, bad: BadLine) -> None:
        if bad.seq not in self._bad:
            self._bad[bad.seq] = bad
            bisect.insort(self._bad_seqs, bad.seq)

    def _publish(self, end: int, lines: int, points: list[tuple[int, int]]) -> None:
        for seq, offset in points:
            k = (seq - 1) // INDEX_EVERY - 1
            if k == len(self._records):
                lo = bisect.bisect_left(self._bad_seqs, k * INDEX_EVERY + 1)
                dirty = lo < len(self._bad_seqs) and self._bad_seqs[lo] < seq
                self._records.append(offset)
                self._index.write_record(k, offset, DIRTY if dirty else 0)
        self._end, self._lines = end, lines
        self._header.end, self._header.lines = end, lines
        self._index.write_header(self._header)
        self._notify()

    # -- appending ---------------------------------------------------------------------------

    async def append(self, lines: list[bytes]) -> AppendResult:
        """Append validated event lines as one all-or-nothing write; durable on return if fsync."""
        started = time.perf_counter()
        async with self._lock:
            result, target = await self._write(lines)
            commit = self._commit
        if self._fsync:
            await self._sync(commit, target)
        if self._on_append is not None:
            self._on_append(len(lines), time.perf_counter() - started)
        return result

    @contextlib.asynccontextmanager
    async def _exclusive(self) -> AsyncIterator[int]:
        """The write descriptor, with the log's flock held and everything before `_written_end` known.

        The flock keeps two gateways (or any writer that takes it) on a shared volume from
        interleaving: whatever another writer appended while we waited is classified first.
        """
        while True:
            await self._prepare_write()
            fd = self._wfd
            assert fd is not None
            await _flock(fd)
            if fd == self._wfd and os.fstat(fd).st_size == self._written_end:
                break
            fcntl.flock(fd, fcntl.LOCK_UN)
            await anyio.lowlevel.checkpoint()  # another writer got in between: let the loop breathe
        try:
            yield fd
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    async def _write(self, lines: list[bytes]) -> tuple[AppendResult, int]:
        data = b"\n".join(lines) + b"\n"
        async with self._exclusive() as fd:
            start, first = self._written_end, self._written_lines + 1
            self._header.pending_start, self._header.pending_end = start, start + len(data)
            self._index.write_header(self._header)
            try:
                if len(data) >= _THREAD_WRITE_MIN:
                    await anyio.to_thread.run_sync(_write_all, fd, data)
                else:
                    _write_all(fd, data)
            except OSError as exc:
                os.ftruncate(fd, start)  # nothing of a failed append stays behind
                if exc.errno in _DISK_FULL:
                    raise DiskFull(f"no space left to append {len(data)} bytes; nothing was written") from exc
                raise StoreError(f"append failed: {exc.strerror}; nothing was written") from exc
            finally:
                self._header.pending_start = self._header.pending_end = 0
                self._index.write_header(self._header)
        self._remember(start, data)
        self._written_end += len(data)
        self._written_lines += len(lines)
        self._commit.unsynced.append((self._written_end, self._written_lines, index_points_of(lines, start, first)))
        self.last_append_ms = _now_ms()
        if not self._fsync:
            self._publish_synced(self._written_end)
        return AppendResult(self._epoch, first, first + len(lines) - 1), self._written_end

    def _remember(self, start: int, data: bytes) -> None:
        if len(data) > RECENT_BYTES:
            self._recent.clear()
            self._recent_bytes = 0
            return
        self._recent.append((start, data))
        self._recent_bytes += len(data)
        while self._recent_bytes > RECENT_BYTES:
            self._recent_bytes -= len(self._recent.popleft()[1])

    async def _prepare_write(self) -> None:
        """Open for writing; take in what other processes appended; cut a torn tail (set aside)."""
        if self._wfd is None:
            created = not self.path.exists()
            self._wfd = os.open(
                self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644
            )
            if created:
                _fsync_dir(self.dir)
            inode = os.fstat(self._wfd).st_ino
            if self._rh is None or self._rh.inode != inode:
                self._reopen_read()
            self._header.inode = inode
        changed = await self._check_file()
        if changed:
            await self._prepare_write()
            return
        size = os.fstat(self._wfd).st_size
        if size > self._written_end:
            # Our own appends still waiting for their fsync lie before the other writer's lines:
            # make them durable first, or publishing past them would make them visible (and
            # acknowledge them) without an fsync.
            await self._sync(self._commit, self._written_end)
            await self._scan_tail()
            if size > self._written_end:
                self._set_aside(self._written_end, size, "torn last line")
                os.ftruncate(self._wfd, self._written_end)

    async def _check_file(self) -> bool:
        """Detect a log deleted, replaced or shortened behind our back: start a new epoch then."""
        try:
            st = os.stat(self.path, follow_symlinks=False)
        except FileNotFoundError:
            if self._written_end or self._wfd is not None:
                self._start_over(True, "log was deleted")
                return True
            return False
        known = self._rh.inode if self._rh is not None else None
        if known is not None and st.st_ino != known:
            self._start_over(True, "log file was replaced")
        elif st.st_size < self._written_end:
            self._start_over(True, f"log shrank from {self._written_end} to {st.st_size} bytes")
        elif known is None:
            self._reopen_read()
            self._header.inode = st.st_ino
        else:
            return False
        return True

    async def _sync(self, commit: _Commit, target: int) -> None:
        """Group commit: one fsync covers every append written into `commit` before it started.

        Each turn of the loop either awaits or ends. A retired commit never syncs again, so an
        append whose log got a new epoch while it waited ends with a definite answer: durable in
        the old file (its fsync got there first), or `SessionReset`.
        """
        while commit.synced_to < target:
            if commit.syncing is not None:
                await commit.syncing.wait()
                continue
            if commit.retired:
                raise SessionReset(
                    "the session's log was reset (deleted or replaced) before this append was on disk; "
                    "it is not in the new log: append again"
                )
            if self._wfd is None:
                raise StoreError("the log was closed before this append was on disk")
            done = commit.syncing = anyio.Event()
            goal, fd = self._written_end, os.dup(self._wfd)  # a new epoch may close _wfd meanwhile
            try:
                with anyio.CancelScope(shield=True):
                    started = time.perf_counter()
                    await anyio.to_thread.run_sync(os.fsync, fd)
                    if self._on_fsync is not None:
                        self._on_fsync(time.perf_counter() - started)
                commit.synced_to = max(commit.synced_to, goal)
                if not commit.retired:
                    self._publish_synced(goal)
            except OSError as exc:
                raise StoreError(f"fsync failed: {exc.strerror}; the append is not known to be on disk") from exc
            finally:
                os.close(fd)
                commit.syncing = None
                done.set()

    def _publish_synced(self, upto: int) -> None:
        commit = self._commit
        commit.synced_to = max(commit.synced_to, upto)
        points: list[tuple[int, int]] = []
        end = lines = None
        while commit.unsynced and commit.unsynced[0][0] <= upto:
            end, lines, pts = commit.unsynced.popleft()
            points.extend(pts)
        if end is not None and lines is not None:
            self._publish(end, lines, points)

    async def poll(self) -> None:
        """Notice appends, truncation or replacement made by another process."""
        if self._lock.locked():
            return  # an append is in progress and will look at the file itself
        try:
            st = os.stat(self.path, follow_symlinks=False)
        except FileNotFoundError:
            st = None
        known = self._rh.inode if self._rh is not None else None
        if st is None and known is None:
            return
        if st is not None and st.st_ino == known and st.st_size == self._written_end:
            return
        async with self._lock:
            if not await self._check_file():
                await self._sync(self._commit, self._written_end)
            await self._scan_tail()

    # -- legacy and deletion -------------------------------------------------------------------

    async def _migrate_legacy(self) -> None:
        """messages.jsonl -> one MESSAGES_SNAPSHOT, then rename; a crash between is repaired here."""
        legacy = self.dir / LEGACY_NAME
        if not legacy.exists():
            return
        last = await self._last_line()
        if last is None or not is_migration_snapshot(last):
            conversion = await anyio.to_thread.run_sync(_convert_file, legacy)
            if conversion.messages:
                line = snapshot_event(self.session, conversion.messages, _now_ms())
                _, target = await self._write([line])
                if self._fsync:
                    await self._sync(self._commit, target)
            log.info(
                "migrated legacy messages",
                extra={"session": self.session, "messages": len(conversion.messages), "skipped": conversion.skipped},
            )
        os.replace(legacy, self.dir / f"{LEGACY_NAME}.migrated")
        _fsync_dir(self.dir)

    async def _last_line(self) -> bytes | None:
        if self._lines == 0 or self._rh is None:
            return None
        start = await self.offset_of(self._lines)
        return await self._rh.pread(self._end - start, start)

    async def delete(self) -> str:
        """Drop the log (PROTOCOL §3 DELETE): open streams get `reset`, the next append starts afresh."""
        async with self._lock:
            await self._sync(self._commit, self._written_end)
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            self._start_over(True, "deleted by request")
            return self._epoch

    async def repair(self) -> None:
        """Cut a torn tail now rather than before the next append (set aside, never lost)."""
        if self.path.exists():
            async with self._lock, self._exclusive():
                pass

    def busy(self) -> bool:
        """In use: followers wait on it, an append holds it, or an append waits for its fsync."""
        return bool(self.waiters) or self._lock.locked() or self._commit.synced_to < self._written_end

    def close(self) -> None:
        """Release descriptors (the sweeper's eviction); data is untouched.

        The object stays usable: anyone still holding it reopens what it needs on next use.
        """
        self._recent.clear()
        self._recent_bytes = 0
        if self._wfd is not None:
            os.close(self._wfd)
            self._wfd = None
        if self._rh is not None:
            self._rh.retire()
            self._rh = None
        if self._idx is not None:
            self._idx.close()
            self._idx = None


class FileStore:
    """Session folders under `<root>/sessions`, with their logs opened on demand and cached."""

    def __init__(self, root: Path, *, fsync: bool, max_event_bytes: int) -> None:
        self.root = root
        self.sessions_dir = root / "sessions"
        self._fsync = fsync
        self._max = max_event_bytes
        self._logs: dict[str, FileLog] = {}
        self._opening: dict[str, anyio.Lock] = {}
        self.on_fsync: Callable[[float], None] | None = None
        self.on_append: Callable[[int, float], None] | None = None  # (events, seconds), every path

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

    async def open(self, project: str, session: str, *, create: bool) -> FileLog:
        """The session's log, loading it on first use; `create` makes the session if missing."""
        cached = self._logs.get(session)
        if cached is None:
            lock = self._opening.setdefault(session, anyio.Lock())
            async with lock:
                cached = self._logs.get(session)
                if cached is None:
                    cached = await self._load(project, session, create)
                    self._logs[session] = cached
            self._opening.pop(session, None)
        if cached.project != project:
            raise ProjectMismatch(f"session {session!r} belongs to project {cached.project!r}, not {project!r}")
        return cached

    async def _load(self, project: str, session: str, create: bool) -> FileLog:
        path = self.session_dir(session)
        meta = await anyio.to_thread.run_sync(read_meta, path)
        if meta is None:
            if not path.is_dir():
                if not create:
                    raise SessionNotFound(f"no session {session!r} in project {project!r}")
                path.mkdir(parents=True)
            meta = {"project": project, "epoch": new_epoch(), "createdAt": _now_ms()}
            await anyio.to_thread.run_sync(write_meta, path, meta)
        elif meta["project"] != project:
            raise ProjectMismatch(f"session {session!r} belongs to project {meta['project']!r}, not {project!r}")
        flog = FileLog(path, meta, fsync=self._fsync, max_event_bytes=self._max, on_fsync=self.on_fsync,
                       on_append=self.on_append)
        await flog.load()
        return flog

    def evict(self, session: str) -> str:
        """Drop a session's cached state (descriptors, index): "evicted", "absent" or "busy" (in use)."""
        flog = self._logs.get(session)
        if flog is None:
            return "absent"
        if flog.busy():
            return "busy"
        del self._logs[session]
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
