"""Descriptor primitives of the file store: whole writes, the writers' flock, shared reads.

Every file under a session folder is opened with O_NOFOLLOW: a symbolic link planted there is
refused, never followed out of the state root (PROTOCOL §1).
"""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import anyio
import anyio.to_thread

from gateway.store.base import LinkRefused, StoreError
from gateway.store.lines import INDEX_EVERY

SCAN_CHUNK = 1 << 20
THREAD_WRITE_MIN = 256 * 1024
"""Writes at least this large go to a worker thread; smaller ones cost less than the hop."""
DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
FLOCK_PATIENCE = 10.0
"""Seconds an append waits for another writer's flock before it fails (503-like StoreError)."""
_NOWAIT: int = getattr(os, "RWF_NOWAIT", 0)
T = TypeVar("T")


def open_nofollow(path: Path, flags: int, mode: int = 0o644) -> int:
    """`os.open` that refuses a symbolic link with a clear `LinkRefused` instead of following it."""
    try:
        return os.open(path, flags | os.O_CLOEXEC | os.O_NOFOLLOW, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise LinkRefused(f"{path} is a symbolic link; refusing to follow it out of the session folder") from None
        raise


def nofollow(path: str | os.PathLike[str], flags: int) -> int:
    """An `opener` for `open()`: the file object then refuses a link like `open_nofollow`."""
    return open_nofollow(Path(path), flags)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def try_flock(fd: int) -> bool:
    """Take the exclusive flock if it is free, as it nearly always is."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


async def flock(fd: int) -> None:
    """Take the exclusive flock without blocking the event loop (and without a cancel scope when
    the lock is free)."""
    if try_flock(fd):
        return
    try:
        with anyio.fail_after(FLOCK_PATIENCE):
            while True:
                if try_flock(fd):
                    return
                await anyio.sleep(0.001)  # another process holds it: there is no event to wait for
    except TimeoutError:
        raise StoreError(f"the log is locked by another writer for over {FLOCK_PATIENCE:g}s") from None


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def truncate(path: Path, size: int) -> None:
    fd = open_nofollow(path, os.O_WRONLY)
    try:
        os.ftruncate(fd, size)
    finally:
        os.close(fd)


def measure_line(fd: int, offset: int) -> int | None:
    """Length of the line at `offset` without holding it in memory; None if it has no end yet."""
    pos = offset
    while True:
        chunk = os.pread(fd, SCAN_CHUNK, pos)
        if not chunk:
            return None
        nl = chunk.find(b"\n")
        if nl >= 0:
            return pos + nl - offset
        pos += len(chunk)


def newline_before(fd: int, offset: int, size: int) -> bool:
    return 0 < offset <= size and os.pread(fd, 1, offset - 1) == b"\n"


def copy_range(fd: int, start: int, stop: int, dest: Path) -> None:
    """Append bytes start..stop of `fd` to `dest` in chunks (a torn tail can be any size)."""
    out = open_nofollow(dest, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        for pos in range(start, stop, SCAN_CHUNK):
            write_all(out, os.pread(fd, min(SCAN_CHUNK, stop - pos), pos))
    finally:
        os.close(out)


def verified_records(fd: int, offsets: list[int], size: int) -> int:
    """How many leading index points really are where they claim (line (k+1)*INDEX_EVERY+1).

    One pass of newline counting up to the last point, at memory speed: an index left ahead
    of its log by a crash, or damaged, is cut where it stops holding, never trusted blindly.
    """
    k, pos, lines_seen, last = 0, 0, 0, b"\n"
    stop = min(offsets[-1], size) if offsets else 0
    while k < len(offsets) and pos < stop:
        chunk = os.pread(fd, min(4 * SCAN_CHUNK, stop - pos), pos)
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


class ReadHandle:
    """A read-only descriptor shared by every reader of a log (pread needs no file position).

    Retired when the log is replaced; closed only once no read is using it.
    """

    def __init__(self, path: Path) -> None:
        self.fd = open_nofollow(path, os.O_RDONLY)
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
        return await self.in_thread(os.pread, size, offset)

    async def pread_lines(self, size: int, offset: int) -> bytes:
        """Up to `size` bytes at `offset` that hold a newline, or all there is up to `size` (b"": EOF).

        From the page cache on the event loop when the bytes are there, as lines another writer
        just appended are: a wake-up per append of another worker then costs no thread hop.
        """
        chunk = await self.pread(size, offset, partial=True)
        if chunk and b"\n" not in chunk:  # a torn last line, or a read the page cache cut short
            chunk = await self.pread(size, offset)
        return chunk

    async def in_thread(self, fn: Callable[..., T], *args: object) -> T:
        """Run `fn(fd, *args)` in a worker thread; the descriptor stays open until it returns."""
        self.users += 1
        try:
            return await anyio.to_thread.run_sync(fn, self.fd, *args)
        finally:
            self.users -= 1
            if self.retired and self.users == 0:
                os.close(self.fd)

    def retire(self) -> None:
        if not self.retired:
            self.retired = True
            if self.users == 0:
                os.close(self.fd)
