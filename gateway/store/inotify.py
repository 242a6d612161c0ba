"""A minimal inotify binding: descriptor, watches, and events as (wd, mask, name) tuples.

`LogWatcher` needs nothing more than each event's watch descriptor, mask and name. Every append
(the gateway's own too: it watches the logs its followers read) queues an IN_MODIFY, and
asyncinotify built per event a ctypes struct copy, a mask enum, a `pathlib.Path`, a
weakref and an event object, and added and removed its loop reader on every wake-up: about 9% of
the server's CPU at 4,000 appends/s over 200 sessions. Here a wake-up is one `os.read` and each
event one `unpack_from`; the caller keeps a single loop reader on `fd`.
"""

from __future__ import annotations

import ctypes
import functools
import os
import struct
from types import TracebackType

IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_Q_OVERFLOW = 0x00004000
"""The event queue overflowed (wd -1): events were lost."""
IN_IGNORED = 0x00008000
"""The watch is gone (removed, or its file deleted); its wd is free."""
IN_ONLYDIR = 0x01000000

_HEADER = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len; then len bytes of name

READ_SIZE = 64 * 1024
"""Bytes asked of one read: thousands of events, each whole (the kernel never splits one)."""
DRAINED = READ_SIZE - (_HEADER.size + 256)
"""A read of at most this many bytes had room for one more event (the longest name, NAME_MAX
and its NUL, padded): the queue was empty when it returned."""


@functools.cache
def _libc() -> ctypes.CDLL:
    """libc's inotify functions; AttributeError where it has none (not Linux)."""
    libc = ctypes.CDLL(None, use_errno=True)
    for name, argtypes in (
        ("inotify_init1", (ctypes.c_int,)),
        ("inotify_add_watch", (ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32)),
        ("inotify_rm_watch", (ctypes.c_int, ctypes.c_int)),
    ):
        function = getattr(libc, name)
        function.argtypes = argtypes
        function.restype = ctypes.c_int
    return libc


def _check(result: int, path: str | os.PathLike[str] | None = None) -> int:
    if result == -1:
        err = ctypes.get_errno()
        if path is None:
            raise OSError(err, os.strerror(err))
        raise OSError(err, os.strerror(err), os.fspath(path))
    return result


class Inotify:
    """One non-blocking, close-on-exec inotify descriptor. OSError (with its errno) when a call
    fails, AttributeError on a platform without inotify."""

    def __init__(self) -> None:
        self.fd = _check(_libc().inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC))  # IN_NONBLOCK | IN_CLOEXEC

    def add_watch(self, path: str | os.PathLike[str], mask: int) -> int:
        """The watch descriptor for `path` (the same one again if its inode is already watched)."""
        return _check(_libc().inotify_add_watch(self.fd, os.fsencode(path), mask), path)

    def rm_watch(self, wd: int) -> None:
        """Remove a watch; its IN_IGNORED follows. EINVAL if it is already gone."""
        _check(_libc().inotify_rm_watch(self.fd, wd))

    def read(self) -> bytes:
        """The events queued (whole ones), b"" when there are none."""
        try:
            return os.read(self.fd, READ_SIZE)
        except BlockingIOError:
            return b""

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Inotify:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def parse_events(buf: bytes) -> list[tuple[int, int, bytes]]:
    """The (wd, mask, name) of each event in what one read returned; name without its NUL
    padding, b"" for an event about the watched object itself."""
    events: list[tuple[int, int, bytes]] = []
    offset, end = 0, len(buf)
    while offset < end:
        wd, mask, _cookie, length = _HEADER.unpack_from(buf, offset)
        offset += _HEADER.size
        events.append((wd, mask, buf[offset:offset + length].rstrip(b"\0") if length else b""))
        offset += length
    return events
