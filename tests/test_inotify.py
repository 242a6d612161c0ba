"""The inotify binding: `parse_events` against kernel-format bytes, and the calls against the kernel."""

from __future__ import annotations

import errno
import os
import struct
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.store.inotify import (
    DRAINED,
    IN_ATTRIB,
    IN_CREATE,
    IN_IGNORED,
    IN_MODIFY,
    IN_ONLYDIR,
    READ_SIZE,
    Inotify,
    parse_events,
)

pytestmark = pytest.mark.unit

names = st.lists(st.integers(1, 255), max_size=255).map(bytes)  # NAME_MAX bytes, never a NUL
events = st.tuples(st.integers(-(2**31), 2**31 - 1), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), names)


def kernel_bytes(event: tuple[int, int, int, bytes], align: int) -> bytes:
    """One struct inotify_event as read(2) returns it: the name NUL-terminated and padded."""
    wd, mask, cookie, name = event
    length = -(-(len(name) + 1) // align) * align if name else 0
    return struct.pack("iIII", wd, mask, cookie, length) + name.ljust(length, b"\0")


@given(st.lists(events, max_size=50), st.sampled_from([4, 16]))
def test_parse_events_takes_back_what_the_kernel_wrote(sequence: list[tuple[int, int, int, bytes]],
                                                       align: int) -> None:
    buf = b"".join(kernel_bytes(event, align) for event in sequence)
    assert parse_events(buf) == [(wd, mask, name) for wd, mask, _cookie, name in sequence]


def test_a_read_that_leaves_room_for_an_event_drained_the_queue() -> None:
    longest = kernel_bytes((1, IN_CREATE, 0, b"x" * 255), 16)
    assert len(longest) == READ_SIZE - DRAINED


def test_the_kernel_reports_growth_replacement_and_removal(tmp_path: Path) -> None:
    log = tmp_path / "log"
    log.write_bytes(b"")
    with Inotify() as inotify:
        assert inotify.read() == b""  # nothing queued: no blocking, no error
        folder = inotify.add_watch(tmp_path, IN_CREATE | IN_ONLYDIR)
        wd = inotify.add_watch(log, IN_MODIFY | IN_ATTRIB)
        assert inotify.add_watch(log, IN_MODIFY | IN_ATTRIB) == wd  # one watch per inode
        with log.open("ab") as f:
            f.write(b"x")
        (tmp_path / "other").write_bytes(b"")
        assert parse_events(inotify.read()) == [(wd, IN_MODIFY, b""), (folder, IN_CREATE, b"other")]
        inotify.rm_watch(wd)
        assert parse_events(inotify.read()) == [(wd, IN_IGNORED, b"")]
        with pytest.raises(OSError) as gone:
            inotify.rm_watch(wd)
        assert gone.value.errno == errno.EINVAL
        with pytest.raises(FileNotFoundError):
            inotify.add_watch(tmp_path / "missing", IN_MODIFY)
        with pytest.raises(NotADirectoryError):
            inotify.add_watch(log, IN_CREATE | IN_ONLYDIR)
        assert os.get_blocking(inotify.fd) is False
        assert os.get_inheritable(inotify.fd) is False
    assert inotify.fd == -1
