"""The driver of one session's log file: the I/O half of a `FileLog`.

A `FileLog` keeps, for its session, how far the log is *classified* (its `LogState`, see
`state.py`): everything below `end` is whole lines whose fate is known (deliverable, or a
`BadLine`), so readers never parse anything and a torn tail is invisible by construction. Lines
the gateway appends are validated on the way in; lines another process wrote are classified
once, when they are noticed. Appends take the log's flock, are written whole, and become visible
once synced (the store's commit cycle syncs every log with unsynced appends at once, `commit.py`).
"""

from __future__ import annotations

import asyncio
import fcntl
import functools
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import anyio.to_thread

from gateway.clock import now_ms
from gateway.store import fds
from gateway.store.base import AppendResult, SessionLog, SessionReset, StoreError
from gateway.store.changes import Changes
from gateway.store.commit import CommitCycle, CycleWrite
from gateway.store.layout import LEGACY_NAME, agree_epoch, convert_legacy_file
from gateway.store.legacy import is_migration_snapshot, snapshot_event
from gateway.store.lines import BadLine, SkipReason, classify, index_points_of, is_index_seq, scan_lines, skip_lines
from gateway.store.logfiles import LogFiles
from gateway.store.state import Commit, LogState

log = logging.getLogger("gateway.store")


class FileLog:
    """One session's log: appends (one writer, shared commit cycles), classification, index, epoch."""

    def __init__(
        self, session_dir: Path, meta: dict[str, Any], *, fsync: bool, max_event_bytes: int,
        commits: CommitCycle, on_append: Callable[[SessionLog, list[bytes], float], None] | None = None,
    ) -> None:
        self.dir, self.session, self.meta = session_dir, session_dir.name, meta
        self.project: str | None = meta["project"]  # None: a legacy folder no project claimed
        self._commits, self._on_append, self._fsync, self._max = commits, on_append, fsync, max_event_bytes
        self._state = LogState(meta["epoch"], batched=fsync)
        self._files = LogFiles(session_dir)
        self.path = self._files.path
        # asyncio's lock, not anyio's: taking a free one costs no loop turn (appends of one turn
        # share a commit cycle) and no lookup of the task's cancel scopes in a weak dictionary.
        self._lock = asyncio.Lock()
        self._woken = False  # `poll` was called while the lock was held
        self.last_append_ms: int | None = None

    # -- what readers see (the EventLog protocol) ---------------------------------------------

    @property
    def epoch(self) -> str:
        return self._state.epoch

    @property
    def end(self) -> int:
        return self._state.end

    @property
    def lines(self) -> int:
        return self._state.lines

    @property
    def version(self) -> int:
        return self._state.changes.version

    @property
    def bad_lines(self) -> int:
        return self._state.bad_lines

    @property
    def waiters(self) -> int:
        return self._state.changes.waiters

    def held(self, offset: int, size: int) -> bytes | None:
        return self._state.recent(offset, size)

    @property
    def changes(self) -> Changes:
        return self._state.changes

    async def read(self, offset: int, size: int) -> bytes:
        """Some bytes at `offset`, at most `size`, never past `end`; b"" only at `end`."""
        held = self._state.recent(offset, size)
        if held is not None:
            return held
        size = min(size, self._state.end - offset)
        rh = self._files.read_handle() if size > 0 else None
        return b"" if rh is None else await rh.pread(size, offset, partial=True)

    def next_bad(self, seq: int) -> BadLine | None:
        return self._state.next_bad(seq)

    async def offset_of(self, seq: int) -> int:
        if seq == self._state.lines + 1:
            return self._state.end
        offset, skip = self._state.seek_point(seq)
        epoch = self.epoch
        while skip:
            chunk = await self.read(offset, 256 * 1024)
            if not chunk or self.epoch != epoch:
                raise StoreError("log changed while seeking")
            used, skip = skip_lines(chunk, skip)
            offset += used
        return offset

    async def wait_change(self, version: int) -> None:
        await self._state.changes.wait(version)

    # -- opening ----------------------------------------------------------------------------

    async def load(self) -> None:
        """Restore state from the index, recover an interrupted append, classify the rest."""
        async with self._lock:
            await self._load_index()
            await self._scan_tail()
            await self._migrate_legacy()

    async def _load_index(self) -> None:
        problem = await self._files.load(self._state, self._max, self.session)
        if problem is not None:
            self._start_over(*problem)

    def _start_over(self, new: bool, why: str, *, ours: bool = False, then: Callable[[], None] | None = None) -> None:
        """Forget everything known about the log; with `new`, it gets a new epoch (PROTOCOL §2)."""
        epoch = self._next_epoch(why, ours=ours, then=then) if new else self.epoch
        self._files.reset(epoch)
        self._state.reset(epoch)

    def _next_epoch(self, why: str, *, ours: bool = False, then: Callable[[], None] | None = None) -> str:
        """The epoch after a reset, agreed with every process serving this folder (`agree_epoch`)."""
        epoch, adopted = agree_epoch(self.dir, self.meta, self.epoch, ours=ours, then=then)
        if adopted:
            log.info("adopted epoch", extra={"session": self.session, "epoch": epoch, "why": why})
        else:
            log.warning("new epoch", extra={"session": self.session, "old_epoch": self.epoch, "epoch": epoch,
                                            "why": why})
        return epoch

    # -- classification of lines the gateway did not write itself -------------------------

    async def _scan_tail(self, seen: int | None = None) -> None:
        """Classify whole lines between `end` and EOF, publishing as it goes (caller holds the lock).

        `seen`: the size a stat just found, whose wake-up this is; once the lines reach it, what
        was appended since comes with a wake-up of its own (`poll`), so no read looks for EOF,
        unless such a wake-up came while the lock was held (`_woken`)."""
        state, files = self._state, self._files
        while (rh := files.rh) is not None:
            pos, seq = state.written_end, state.written_lines + 1
            chunk = await rh.pread_lines(fds.SCAN_CHUNK, pos)
            cut = chunk.rfind(b"\n")
            if cut >= 0:
                scan = scan_lines(chunk[: cut + 1], pos, seq, self._max)
                files.write_index(state.took_in(cut + 1, scan.lines, scan.bad, scan.index_points), state)
                if seen is not None and state.written_end >= seen and not self._woken:
                    return
                continue
            if len(chunk) < fds.SCAN_CHUNK:
                return  # EOF, possibly with a torn tail: invisible until whole
            length = await rh.in_thread(fds.measure_line, pos)
            if length is None:
                return
            reason: SkipReason | None = "oversize"
            if length <= self._max:
                reason = classify(await rh.pread(length, pos), self._max)
            bad = [BadLine(seq, pos, length, reason)] if reason else []
            points = [(seq, pos)] if is_index_seq(seq) else []
            files.write_index(state.took_in(length + 1, 1, bad, points), state)

    # -- appending ---------------------------------------------------------------------------

    async def append(self, lines: list[bytes]) -> AppendResult:
        """Append validated event lines as one all-or-nothing write; durable on return if fsync."""
        return await (await self.write(lines)).durable()

    async def write(self, lines: list[bytes]) -> CycleWrite:
        """The write half of `append`: one all-or-nothing write, visible once `durable` returned."""
        started = time.perf_counter()
        async with self._lock:
            return self._written(await self._write(lines), lines, started)

    def write_now(self, lines: list[bytes]) -> CycleWrite | None:
        """`write` when it takes no wait: nothing else holds the log, the file is as our last append
        left it and the append is small. None otherwise, with nothing written."""
        data = b"\n".join(lines) + b"\n"
        if self._lock.locked() or len(data) >= fds.THREAD_WRITE_MIN:
            return None
        if (fd := self._files.flocked(self._state.written_end)) is None:
            return None
        started = time.perf_counter()
        with self._files.appending(fd, self._state.written_end, data, len(lines)) as start:
            fds.write_all(fd, data)
        return self._written(self._wrote(start, data, lines), lines, started)

    def _written(self, result: AppendResult, lines: list[bytes], started: float) -> CycleWrite:
        commit, target = self._state.commit, self._state.written_end
        synced = functools.partial(self._synced_to, commit, target) if self._fsync else None
        return CycleWrite(result, self._commits, self, synced, functools.partial(self._appended, lines, started))

    def _appended(self, lines: list[bytes], started: float) -> None:
        if self._on_append is not None:
            self._on_append(self, lines, time.perf_counter() - started)

    async def _lock_file(self) -> int:
        """The write descriptor, with the log's flock held and everything before `written_end` known.

        The flock keeps two gateways (or any writer that takes it) on a shared volume from
        interleaving: whatever another writer appended while we waited is classified first. The
        caller releases it. Nearly always nothing changed since our last append (`flocked`).
        """
        if (fd := self._files.flocked(self._state.written_end)) is not None:
            return fd
        while True:
            fd = await self._prepare_write()
            await fds.flock(fd)
            if fd == self._files.wfd and os.fstat(fd).st_size == self._state.written_end:
                return fd
            fcntl.flock(fd, fcntl.LOCK_UN)
            await anyio.lowlevel.checkpoint()  # another writer got in between: let the loop breathe

    async def _write(self, lines: list[bytes]) -> AppendResult:
        data = b"\n".join(lines) + b"\n"
        fd = await self._lock_file()
        with self._files.appending(fd, self._state.written_end, data, len(lines)) as start:
            if len(data) >= fds.THREAD_WRITE_MIN:
                await anyio.to_thread.run_sync(fds.write_all, fd, data)
            else:
                fds.write_all(fd, data)
        return self._wrote(start, data, lines)

    def _wrote(self, start: int, data: bytes, lines: list[bytes]) -> AppendResult:
        state, first = self._state, self._state.written_lines + 1
        state.wrote(start, data, len(lines), index_points_of(lines, start, first))
        self.last_append_ms = now_ms()
        if not self._fsync:
            self._files.write_index(state.synced(state.written_end), state)
        return AppendResult(self.epoch, first, first + len(lines) - 1)

    async def _prepare_write(self) -> int:
        """The write descriptor, once what other processes appended is taken in and a torn tail
        cut (set aside)."""
        files, state = self._files, self._state
        fd = -1 if files.wfd is None else files.wfd
        st = os.fstat(fd) if fd >= 0 else None
        if st is None or st.st_nlink == 0 or st.st_size < state.written_end:
            # No descriptor yet, or its file lost its name (deleted, replaced) or shrank: look at
            # the path (a file replaced while hard-linked elsewhere is noticed by `poll`).
            fd = files.open_write()
            while self._check_file(files.stat()):
                fd = files.open_write()
            st = os.fstat(fd)
        size = st.st_size
        if size > state.written_end:
            # Our own appends still waiting for their fsync lie before the other writer's lines:
            # make them durable first, or publishing past them would make them visible (and
            # acknowledge them) without an fsync.
            await self._sync(state.commit, state.written_end)
            await self._scan_tail()
            if size > state.written_end:
                files.set_aside(state.written_end, size, "torn last line", self.session)
                os.ftruncate(fd, state.written_end)
        return fd

    def _check_file(self, st: os.stat_result | None) -> bool:
        """A log deleted, replaced or shortened behind our back (`st`: the path's stat) starts a new epoch."""
        files, written = self._files, self._state.written_end
        if st is None:
            if written or files.wfd is not None:
                self._start_over(True, "log was deleted")
                return True
            return False
        known = files.known_inode()
        if known is not None and st.st_ino != known:
            self._start_over(True, "log file was replaced")
        elif st.st_size < written:
            self._start_over(True, f"log shrank from {written} to {st.st_size} bytes")
        elif known is None:
            files.reopen_read()
            files.header.inode = st.st_ino
        else:
            return False
        return True

    async def _sync(self, commit: Commit, target: int) -> None:
        """Wait until a cycle made `commit`'s file durable up to `target`. A retired commit never syncs again: an
        append whose log got a new epoch meanwhile is durable in the old file (a cycle came first) or `SessionReset`."""
        while not self._synced_to(commit, target):
            await self._commits.sync(self)

    def _synced_to(self, commit: Commit, target: int) -> bool:
        """Whether `commit`'s file is durable up to `target`; raises once it never will be."""
        if commit.synced_to >= target:
            return True
        if commit.retired:
            raise SessionReset("the session's log was reset (deleted or replaced) before this append was on "
                               "disk; it is not in the new log: append again")
        if self._files.wfd is None:
            raise StoreError("the log was closed before this append was on disk")
        return False

    def claim_sync(self) -> tuple[int, int, int, object] | None:
        """What the commit cycle starting now makes durable: everything written so far, through a
        duplicate of the write descriptor (a new epoch may close it meanwhile)."""
        commit, files = self._state.commit, self._files
        if commit.retired or files.wfd is None or commit.synced_to >= self._state.written_end:
            return None
        return os.dup(files.wfd), files.device, self._state.written_end, commit

    def synced(self, goal: int, commit: object) -> None:
        assert isinstance(commit, Commit)
        commit.synced_to = max(commit.synced_to, goal)
        if not commit.retired:
            self._files.write_index(self._state.synced(goal), self._state)

    def changed(self) -> bool:
        """Whether `poll` would take anything in (one stat; the inotify reader asks before it)."""
        if self._lock.locked():
            self._woken = True  # an append looks at the file itself, a poll reads on to EOF
            return False
        st, known = self._files.stat(), self._files.known_inode()
        if st is None:
            return known is not None  # gone since we knew it
        return st.st_ino != known or st.st_size != self._state.written_end

    async def poll(self, *, checked: bool = False) -> None:
        """Notice appends, truncation or replacement made by another process (`checked`: `changed` said so)."""
        if not checked and not self.changed():
            return
        async with self._lock:  # free, but an append woken for it may go first: stat again
            self._woken = False
            st = self._files.stat()
            if not self._check_file(st):
                await self._sync(self._state.commit, self._state.written_end)
            await self._scan_tail(None if st is None else st.st_size)

    # -- legacy and deletion -------------------------------------------------------------------

    async def _migrate_legacy(self) -> None:
        """messages.jsonl -> one MESSAGES_SNAPSHOT, then rename; a crash between is repaired here."""
        legacy = self.dir / LEGACY_NAME
        if not legacy.exists() and not legacy.is_symlink():
            return
        last = await self._last_line()
        if last is None or not is_migration_snapshot(last):
            conversion = await anyio.to_thread.run_sync(convert_legacy_file, legacy)
            if conversion.messages:
                line = snapshot_event(self.session, conversion.messages, now_ms())
                await self._write([line])
                if self._fsync:
                    await self._sync(self._state.commit, self._state.written_end)
            log.info("migrated legacy messages", extra={"session": self.session, "messages": len(conversion.messages),
                                                        "skipped": conversion.skipped})
        os.replace(legacy, self.dir / f"{LEGACY_NAME}.migrated")
        fds.fsync_dir(self.dir)

    async def _last_line(self) -> bytes | None:
        if self.lines == 0 or self._files.rh is None:
            return None
        start = await self.offset_of(self.lines)
        return await self._files.rh.pread(self.end - start, start)

    async def delete(self) -> str:
        """Drop the log (PROTOCOL §3 DELETE): open streams get `reset`, the next append starts afresh."""
        async with self._lock:
            await self._sync(self._state.commit, self._state.written_end)
            self._start_over(True, "deleted by request", ours=True, then=lambda: self.path.unlink(missing_ok=True))
            return self.epoch

    async def repair(self) -> None:
        """Cut a torn tail now rather than before the next append (set aside, never lost)."""
        if self.path.exists():
            async with self._lock:
                fcntl.flock(await self._lock_file(), fcntl.LOCK_UN)

    def writing(self) -> bool:
        """An append holds the log, or waits for its fsync: its descriptors must stay open."""
        state = self._state
        return self._lock.locked() or state.commit.synced_to < state.written_end

    def busy(self) -> bool:
        """In use: followers wait on it, or an append is under way."""
        return bool(self.waiters) or self.writing()

    def close(self) -> None:
        """Release descriptors (the sweeper's eviction); data is untouched. The object stays
        usable: anyone still holding it reopens what it needs on next use."""
        self._state.forget_recent()
        self._files.close()
