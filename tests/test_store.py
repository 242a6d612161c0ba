"""The file store on real files: appends, index, restarts, torn and corrupt lines, epochs, legacy logs."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import anyio
import orjson
import pytest

from gateway.store import logfiles
from gateway.store.base import DiskFull, ProjectMismatch, SessionNotFound
from gateway.store.fds import ReadHandle
from gateway.store.filelog import FileLog
from gateway.store.files import FileStore
from gateway.store.index import IndexFile
from gateway.store.layout import INDEX_NAME, LOG_NAME
from gateway.store.lines import INDEX_EVERY
from gateway.stream.framing import Batch, Item, Reset, Skipped
from gateway.stream.reader import LogReader

pytestmark = [pytest.mark.anyio, pytest.mark.unit]


def ev(n: int, **extra: object) -> bytes:
    return orjson.dumps({"type": "X", "n": n, **extra})


FSYNC_MODES = ("always", "never")


def make_store(root: Path, fsync: str, max_event_bytes: int = 10 * 1024 * 1024) -> FileStore:
    store = FileStore(root, fsync=fsync == "always", max_event_bytes=max_event_bytes)
    store.ensure_root()
    return store


async def read_all(flog: FileLog, *, after: int | None = None, budget: int = 65536) -> list[Item]:
    reader = LogReader(flog, chunk_bytes=4096)
    from gateway.store.cursor import Cursor

    await reader.seek(Cursor(flog.epoch, after) if after else None)
    out: list[Item] = []
    while items := await reader.read(budget):
        out.extend(items)
    return out


def seqs_of(items: list[Item]) -> list[int]:
    out: list[int] = []
    for item in items:
        if isinstance(item, Batch):
            out.extend(range(item.first, item.last + 1))
        elif isinstance(item, Skipped):
            out.append(item.seq)
    return out


def events_of(items: list[Item]) -> list[dict[str, object]]:
    return [orjson.loads(line) for item in items if isinstance(item, Batch) for line in item.data.split(b"\n")]


async def test_append_assigns_contiguous_seqs_and_survives_restart(tmp_path: Path, fsync: str) -> None:
    store = make_store(tmp_path, fsync)
    flog = await store.open("p", "s", create=True)
    r1 = await flog.append([ev(1), ev(2)])
    r2 = await flog.append([ev(3)])
    assert (r1.first, r1.last, r2.first, r2.last) == (1, 2, 3, 3)
    epoch = flog.epoch
    store.close()

    store2 = make_store(tmp_path, fsync)
    flog2 = await store2.open("p", "s", create=False)
    assert (flog2.epoch, flog2.lines) == (epoch, 3)
    assert [e["n"] for e in events_of(await read_all(flog2))] == [1, 2, 3]
    assert (await flog2.append([ev(4)])).first == 4


async def test_unknown_session_and_project_mismatch(tmp_path: Path, fsync: str) -> None:
    store = make_store(tmp_path, fsync)
    with pytest.raises(SessionNotFound):
        await store.open("p", "nope", create=False)
    assert not (tmp_path / "sessions" / "nope").exists()
    await store.open("p", "s", create=True)
    with pytest.raises(ProjectMismatch, match="belongs to project 'p'"):
        await store.open("q", "s", create=True)
    store.close()
    with pytest.raises(ProjectMismatch):
        await make_store(tmp_path, fsync).open("q", "s", create=True)


async def test_symlinked_session_folder_is_refused(tmp_path: Path, fsync: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    store = make_store(tmp_path / "root", fsync)
    os.symlink(outside, tmp_path / "root" / "sessions" / "evil")
    with pytest.raises(SessionNotFound, match="symbolic link"):
        await store.open("p", "evil", create=True)
    assert list(outside.iterdir()) == []


async def test_resume_uses_the_index_and_is_exact(tmp_path: Path, fsync: str) -> None:
    store = make_store(tmp_path, fsync)
    flog = await store.open("p", "s", create=True)
    total = INDEX_EVERY * 5 + 17
    for start in range(0, total, 500):
        await flog.append([ev(n) for n in range(start + 1, min(total, start + 500) + 1)])
    assert len(flog._state.records) == 5
    for seq in (1, 2, INDEX_EVERY, INDEX_EVERY + 1, INDEX_EVERY * 3 + 7, total, total + 1):
        offset = await flog.offset_of(seq)
        data = (tmp_path / "sessions" / "s" / LOG_NAME).read_bytes()
        assert offset == 0 or data[offset - 1: offset] == b"\n"
        assert data[:offset].count(b"\n") == seq - 1
    items = await read_all(flog, after=INDEX_EVERY * 3 + 7)
    assert seqs_of(items) == list(range(INDEX_EVERY * 3 + 8, total + 1))


async def test_a_seek_and_replay_through_the_appends_held_in_memory_read_once_each(
        tmp_path: Path, fsync: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A follower that asks for the last 40 of 60 events, one append each: its seek (20 lines to
    skip from the log's start) and its replay are one read each from memory, not one per append."""
    store = make_store(tmp_path, fsync)
    flog = await store.open("p", "s", create=True)
    for n in range(1, 61):
        await flog.append([ev(n)])
    reads: list[tuple[int, int]] = []
    real = flog.read

    async def counted(offset: int, size: int) -> bytes:
        reads.append((offset, size))
        return await real(offset, size)

    monkeypatch.setattr(flog, "read", counted)
    monkeypatch.setattr(flog._files, "read_handle", lambda: pytest.fail("read from the file"))
    items = await read_all(flog, after=20)
    assert seqs_of(items) == list(range(21, 61))
    assert len(reads) == 2


async def test_torn_tail_is_invisible_then_set_aside_before_next_append(tmp_path: Path, fsync: str) -> None:
    store = make_store(tmp_path, fsync)
    flog = await store.open("p", "s", create=True)
    await flog.append([ev(1), ev(2)])
    log_path = tmp_path / "sessions" / "s" / LOG_NAME
    with open(log_path, "ab") as fh:
        fh.write(b'{"type":"X","n":3,"tor')  # a writer died mid-line
    store.close()

    flog = await make_store(tmp_path, fsync).open("p", "s", create=False)
    assert flog.lines == 2
    assert seqs_of(await read_all(flog)) == [1, 2]
    result = await flog.append([ev(3)])
    assert result.first == 3
    assert [e["n"] for e in events_of(await read_all(flog))] == [1, 2, 3]
    aside = list((tmp_path / "sessions" / "s").glob(f"{LOG_NAME}.torn-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == b'{"type":"X","n":3,"tor'


async def test_crash_in_the_middle_of_a_multi_line_append_rolls_it_back(tmp_path: Path, fsync: str) -> None:
    store = make_store(tmp_path, fsync)
    flog = await store.open("p", "s", create=True)
    await flog.append([ev(1)])
    log_path = tmp_path / "sessions" / "s" / LOG_NAME
    start = log_path.stat().st_size
    batch = ev(2) + b"\n" + ev(3) + b"\n" + ev(4) + b"\n"
    # What a crash leaves: the intent recorded in the index header, and part of the data written.
    flog._files.mark_pending(start, start + len(batch))
    with open(log_path, "ab") as fh:
        fh.write(batch[: len(ev(2)) + 1 + 5])  # line 2 whole, line 3 torn
    store.close()

    flog = await make_store(tmp_path, fsync).open("p", "s", create=False)
    assert flog.lines == 1  # all or nothing: the whole line 2 went too
    assert log_path.stat().st_size == start
    assert [e["n"] for e in events_of(await read_all(flog))] == [1]


async def test_completed_append_with_stale_intent_is_kept(tmp_path: Path, fsync: str) -> None:
    store = make_store(tmp_path, fsync)
    flog = await store.open("p", "s", create=True)
    log_path = tmp_path / "sessions" / "s" / LOG_NAME
    await flog.append([ev(1)])
    start = log_path.stat().st_size
    flog._files.mark_pending(start, start + len(ev(2)) + 1)
    with open(log_path, "ab") as fh:
        fh.write(ev(2) + b"\n")
    store.close()
    flog = await make_store(tmp_path, fsync).open("p", "s", create=False)
    assert flog.lines == 2


async def test_corrupt_and_oversize_lines_are_skipped_not_dropped(tmp_path: Path, fsync: str) -> None:
    session = tmp_path / "sessions" / "s"
    session.mkdir(parents=True)
    big = b'{"type":"X","pad":"' + b"x" * 5000 + b'"}'
    lines = [ev(1), b"not json", ev(3), big, b"[1,2]", b"", ev(7)]
    (session / LOG_NAME).write_bytes(b"\n".join(lines) + b"\n")
    store = make_store(tmp_path, fsync, max_event_bytes=1000)
    flog = await store.open("p", "s", create=True)
    items = await read_all(flog)
    assert seqs_of(items) == list(range(1, 8))
    skipped = {i.seq: (i.reason, i.nbytes) for i in items if isinstance(i, Skipped)}
    assert skipped == {2: ("corrupt", 8), 4: ("oversize", len(big)), 5: ("corrupt", 5), 6: ("corrupt", 0)}
    assert [e["n"] for e in events_of(items)] == [1, 3, 7]
    # Resuming right after a skipped line, and right before one.
    assert seqs_of(await read_all(flog, after=2)) == list(range(3, 8))
    assert seqs_of(await read_all(flog, after=3)) == list(range(4, 8))


async def test_line_larger_than_a_chunk_and_frame_is_delivered_alone(tmp_path: Path, fsync: str) -> None:
    store = make_store(tmp_path, fsync)
    flog = await store.open("p", "s", create=True)
    big = orjson.dumps({"type": "X", "n": 2, "pad": "y" * 200_000})
    await flog.append([ev(1), big, ev(3)])
    items = await read_all(flog, budget=1024)
    assert [(i.first, i.last) for i in items if isinstance(i, Batch)] == [(1, 1), (2, 2), (3, 3)]
    assert events_of(items)[1]["pad"] == "y" * 200_000


async def test_oversize_line_larger_than_scan_chunk_is_measured_not_held(tmp_path: Path, fsync: str) -> None:
    session = tmp_path / "sessions" / "s"
    session.mkdir(parents=True)
    huge = b'{"type":"X","pad":"' + b"z" * (3 << 20) + b'"}'
    (session / LOG_NAME).write_bytes(ev(1) + b"\n" + huge + b"\n" + ev(3) + b"\n")
    flog = await make_store(tmp_path, fsync, max_event_bytes=1 << 20).open("p", "s", create=True)
    items = await read_all(flog)
    assert seqs_of(items) == [1, 2, 3]
    assert [(i.seq, i.reason, i.nbytes) for i in items if isinstance(i, Skipped)] == [(2, "oversize", len(huge))]


async def test_bad_lines_are_found_again_after_restart(tmp_path: Path, fsync: str) -> None:
    session = tmp_path / "sessions" / "s"
    session.mkdir(parents=True)
    lines = [ev(n) if n % 700 else b"garbage" for n in range(1, INDEX_EVERY * 3 + 1)]
    (session / LOG_NAME).write_bytes(b"\n".join(lines) + b"\n")
    flog = await make_store(tmp_path, fsync).open("p", "s", create=True)
    first = [i.seq for i in await read_all(flog) if isinstance(i, Skipped)]
    assert first == [700, 1400, 2100, 2800]
    flog.close()
    flog = await make_store(tmp_path, fsync).open("p", "s", create=False)
    assert [i.seq for i in await read_all(flog) if isinstance(i, Skipped)] == first


async def test_appends_by_another_process_are_classified_and_delivered(tmp_path: Path, fsync: str) -> None:
    store = make_store(tmp_path, fsync)
    flog = await store.open("p", "s", create=True)
    await flog.append([ev(1)])
    with open(tmp_path / "sessions" / "s" / LOG_NAME, "ab") as fh:
        fh.write(ev(2) + b"\nbroken\n" + ev(4) + b"\n")
    await flog.poll()
    assert flog.lines == 4
    assert seqs_of(await read_all(flog)) == [1, 2, 3, 4]
    assert (await flog.append([ev(5)])).first == 5


async def test_noticing_another_writers_append_reads_the_file_once(tmp_path: Path, fsync: str,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A wake-up per append of another worker: one read, none to look for EOF (the size the stat
    under the log's lock found bounds it; what comes later brings its own wake-up), and two stats
    (one that finds the file grown, one under the lock). A torn last line still takes the reads
    that find it torn, and stays invisible."""
    store = make_store(tmp_path, fsync)
    flog = await store.open("p", "s", create=True)
    await flog.append([ev(1)])
    path = tmp_path / "sessions" / "s" / LOG_NAME
    stats, reads = [0], [0]
    real_stat, real_preadv, real_pread = os.stat, os.preadv, os.pread

    def counted_stat(*args: object, **kwargs: object) -> os.stat_result:
        stats[0] += 1
        return real_stat(*args, **kwargs)  # type: ignore[arg-type]

    def counted_preadv(*args: object) -> int:
        reads[0] += 1
        return real_preadv(*args)  # type: ignore[arg-type]

    def counted_pread(*args: object) -> bytes:  # where RWF_NOWAIT is not supported
        reads[0] += 1
        return real_pread(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "stat", counted_stat)
    monkeypatch.setattr(os, "preadv", counted_preadv)
    monkeypatch.setattr(os, "pread", counted_pread)
    for n in (2, 3, 4):
        with open(path, "ab") as fh:
            fh.write(ev(n) + b"\n")
        stats[0] = reads[0] = 0
        await flog.poll()
        assert (flog.lines, stats[0], reads[0]) == (n, 2, 1)
    with open(path, "ab") as fh:
        fh.write(ev(5) + b"\n" + ev(6)[:5])
    await flog.poll()
    assert flog.lines == 5
    monkeypatch.undo()
    assert seqs_of(await read_all(flog)) == [1, 2, 3, 4, 5]


async def test_a_wake_up_while_a_poll_reads_is_not_lost(tmp_path: Path, fsync: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Another writer appends again while a poll is reading the lines of its first append: that
    second wake-up finds the log busy and returns, so the poll under way reads on past the size
    its own stat saw."""
    store = make_store(tmp_path, fsync)
    flog = await store.open("p", "s", create=True)
    await flog.append([ev(1)])
    path = tmp_path / "sessions" / "s" / LOG_NAME
    real = ReadHandle.pread_lines
    raced: list[int] = []

    async def racing(self: ReadHandle, size: int, offset: int) -> bytes:
        chunk = await real(self, size, offset)
        if not raced:
            raced.append(1)
            with open(path, "ab") as fh:
                fh.write(ev(3) + b"\n")
            await flog.poll()  # the second wake-up, while the first poll holds the log
        return chunk

    monkeypatch.setattr(ReadHandle, "pread_lines", racing)
    with open(path, "ab") as fh:
        fh.write(ev(2) + b"\n")
    await flog.poll()
    assert raced and flog.lines == 3
    assert seqs_of(await read_all(flog)) == [1, 2, 3]


async def test_a_poll_that_waits_for_the_lock_behind_an_append_keeps_the_epoch(tmp_path: Path, fsync: str) -> None:
    """A poll that finds the log free, but behind an append already woken to take it, waits for
    that append: the file it stat'ed first is then shorter than what the log wrote, which is no
    shrink. (The lock is held by the test itself to line the three up.)"""
    store = make_store(tmp_path, fsync)
    flog = await store.open("p", "s", create=True)
    await flog.append([ev(1)])
    epoch = flog.epoch
    with open(tmp_path / "sessions" / "s" / LOG_NAME, "ab") as fh:
        fh.write(ev(2) + b"\n")  # another writer's line: the poll has something to notice
    async with anyio.create_task_group() as tg:
        async with flog._lock:
            tg.start_soon(flog.append, [ev(3)])
            await anyio.wait_all_tasks_blocked()  # the append waits for the lock
        await flog.poll()  # the lock is free, the append goes first
    assert (flog.epoch, flog.lines) == (epoch, 3)
    assert seqs_of(await read_all(flog)) == [1, 2, 3]


async def test_truncated_or_replaced_log_gets_a_new_epoch(tmp_path: Path, fsync: str) -> None:
    store = make_store(tmp_path, fsync)
    flog = await store.open("p", "s", create=True)
    await flog.append([ev(n) for n in range(1, 6)])
    old = flog.epoch
    log_path = tmp_path / "sessions" / "s" / LOG_NAME
    with open(log_path, "r+b") as fh:
        fh.truncate(len(ev(1)) + 1)
    await flog.poll()
    assert flog.epoch != old and flog.lines == 1

    reader = LogReader(flog)
    await reader.seek()
    await reader.read(65536)
    replaced = tmp_path / "new.jsonl"
    replaced.write_bytes(ev(100) + b"\n" + ev(101) + b"\n")
    os.replace(replaced, log_path)
    mid = flog.epoch
    await flog.poll()
    assert flog.epoch not in (old, mid) and flog.lines == 2
    items = await reader.read(65536)
    assert isinstance(items[0], Reset) and items[0].epoch == flog.epoch
    assert [e["n"] for e in events_of(items)] == [100, 101]


async def test_shrunk_while_down_is_a_new_epoch_after_restart(tmp_path: Path, fsync: str) -> None:
    store = make_store(tmp_path, fsync)
    flog = await store.open("p", "s", create=True)
    await flog.append([ev(n) for n in range(1, 6)])
    old = flog.epoch
    store.close()
    with open(tmp_path / "sessions" / "s" / LOG_NAME, "r+b") as fh:
        fh.truncate(len(ev(1)) + 1)
    flog = await make_store(tmp_path, fsync).open("p", "s", create=False)
    assert flog.epoch != old and flog.lines == 1


def _header_on_disk(tmp_path: Path) -> tuple[int, int, int]:
    """(end, lines, pending_end) as the index file holds them now."""
    header, _ = IndexFile(str(tmp_path / "sessions" / "s" / INDEX_NAME)).load()
    assert header is not None
    return header.end, header.lines, header.pending_end


async def test_the_index_header_is_rewritten_once_an_interval_and_on_close(
        tmp_path: Path, fsync: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A header rewritten by every commit cycle is a page each cycle's syncfs writes back: it lags
    by up to HEADER_EVERY instead, but a crash's rollback mark and the state at close are exact."""
    monkeypatch.setattr(logfiles, "HEADER_EVERY", 3600.0)
    store = make_store(tmp_path, fsync)
    flog = await store.open("p", "s", create=True)
    await flog.append([ev(1)])
    first = flog.end
    assert _header_on_disk(tmp_path) == (first, 1, 0)
    for n in range(2, 6):
        await flog.append([ev(n)])
    assert _header_on_disk(tmp_path) == (first, 1, 0)  # behind, as the interval allows
    await flog.append([ev(6), ev(7)])  # marked in flight before its write, the mark cleared after
    assert _header_on_disk(tmp_path) == (flog.end, 7, 0)
    await flog.append([ev(8)])
    store.close()
    assert _header_on_disk(tmp_path) == (flog.end, 8, 0)
    reopened = await make_store(tmp_path, fsync).open("p", "s", create=False)
    assert (reopened.epoch, reopened.lines) == (flog.epoch, 8)


async def test_the_header_keeps_another_writers_mark_while_it_holds_the_flock(
        tmp_path: Path, fsync: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another process (a second worker) in the middle of a multi-line append holds the flock and
    has its rollback mark in the header; taking in its first line must not write our header (which
    has no such mark) over it. Once the flock is free, the header is ours again."""
    monkeypatch.setattr(logfiles, "HEADER_EVERY", 0.0)
    store = make_store(tmp_path, fsync)
    flog = await store.open("p", "s", create=True)
    await flog.append([ev(1)])
    other = os.open(tmp_path / "sessions" / "s" / LOG_NAME, os.O_WRONLY | os.O_APPEND)
    try:
        fcntl.flock(other, fcntl.LOCK_EX)
        index = IndexFile(str(tmp_path / "sessions" / "s" / INDEX_NAME))
        header, _ = index.load()
        assert header is not None
        header.pending_start, header.pending_end = flog.end, flog.end + 1000
        index.write_header(header)
        index.close()
        os.write(other, ev(2) + b"\n")  # the first line of its append, the rest still to come
        await flog.poll()
        assert flog.lines == 2
        assert _header_on_disk(tmp_path)[2] == header.pending_end
        fcntl.flock(other, fcntl.LOCK_UN)
        store.close()
        assert _header_on_disk(tmp_path) == (flog.end, 2, 0)
    finally:
        os.close(other)


async def test_a_header_that_cannot_be_written_at_close_still_closes(
        tmp_path: Path, fsync: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(logfiles, "HEADER_EVERY", 3600.0)
    store = make_store(tmp_path, fsync)
    flog = await store.open("p", "s", create=True)
    for n in range(1, 4):
        await flog.append([ev(n)])

    def failing(_self: IndexFile, _header: object) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(IndexFile, "write_header", failing)
    store.close()
    assert flog._files.wfd is None and flog._files._idx is None
    assert "index header not written" in caplog.text
    monkeypatch.undo()
    reopened = await make_store(tmp_path, fsync).open("p", "s", create=False)
    assert (reopened.epoch, reopened.lines) == (flog.epoch, 3)


async def test_stale_or_garbage_index_is_not_trusted(tmp_path: Path, fsync: str) -> None:
    store = make_store(tmp_path, fsync)
    flog = await store.open("p", "s", create=True)
    await flog.append([ev(n) for n in range(1, INDEX_EVERY * 2 + 10)])
    store.close()
    idx = tmp_path / "sessions" / "s" / INDEX_NAME
    raw = bytearray(idx.read_bytes())
    raw[64:72] = (12345).to_bytes(8, "little")  # first index point no longer at a line start
    raw[80:88] = (999_999_999).to_bytes(8, "little")  # second beyond the end of the log
    idx.write_bytes(bytes(raw))
    flog = await make_store(tmp_path, fsync).open("p", "s", create=False)
    items = await read_all(flog, after=INDEX_EVERY + 5)
    assert seqs_of(items) == list(range(INDEX_EVERY + 6, INDEX_EVERY * 2 + 10))
    assert next(e["n"] for e in events_of(items)) == INDEX_EVERY + 6

    idx.write_bytes(b"garbage")
    flog.close()
    flog = await make_store(tmp_path, fsync).open("p", "s", create=False)
    assert flog.lines == INDEX_EVERY * 2 + 9


async def test_delete_starts_a_new_epoch_and_readers_see_reset(tmp_path: Path, fsync: str) -> None:
    flog = await make_store(tmp_path, fsync).open("p", "s", create=True)
    await flog.append([ev(1), ev(2)])
    reader = LogReader(flog)
    await reader.seek()
    assert seqs_of(await reader.read(65536)) == [1, 2]
    old = flog.epoch
    new = await flog.delete()
    assert new != old and flog.lines == 0
    assert not (tmp_path / "sessions" / "s" / LOG_NAME).exists()
    assert (await flog.append([ev(9)])).first == 1
    items = await reader.read(65536)
    assert isinstance(items[0], Reset) and items[0].epoch == new
    assert [e["n"] for e in events_of(items)] == [9]


async def test_disk_full_writes_nothing(tmp_path: Path, fsync: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """ENOSPC cannot be produced on this machine's disk without filling it, so os.write is made
    to fail after writing part of the data, exactly as a full disk does."""
    flog = await make_store(tmp_path, fsync).open("p", "s", create=True)
    await flog.append([ev(1)])
    size = (tmp_path / "sessions" / "s" / LOG_NAME).stat().st_size
    real_write = os.write

    def full_disk(fd: int, data: bytes | memoryview) -> int:
        real_write(fd, bytes(data)[:7])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", full_disk)
    with pytest.raises(DiskFull, match="nothing was written"):
        await flog.append([ev(2), ev(3)])
    monkeypatch.undo()
    assert (tmp_path / "sessions" / "s" / LOG_NAME).stat().st_size == size
    assert (await flog.append([ev(2)])).first == 2
    assert [e["n"] for e in events_of(await read_all(flog))] == [1, 2]


async def test_group_commit_shares_fsyncs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import anyio

    flog = await make_store(tmp_path, "always").open("p", "s", create=True)
    calls = 0
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        nonlocal calls
        calls += 1
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counting_fsync)
    async with anyio.create_task_group() as tg:
        for n in range(50):
            tg.start_soon(flog.append, [ev(n)])
    assert flog.lines == 50
    assert calls < 50


async def test_an_evicted_log_still_works_for_whoever_holds_it(tmp_path: Path, fsync: str) -> None:
    store = make_store(tmp_path, fsync)
    flog = await store.open("p", "s", create=True)
    await flog.append([ev(1), ev(2)])
    reader = LogReader(flog)
    await reader.seek()
    assert store.evict("s") == "evicted" and store.evict("s") == "absent"
    assert seqs_of(await reader.read(65536)) == [1, 2]  # descriptors reopen on use
    assert (await flog.append([ev(3)])).first == 3
    again = await store.open("p", "s", create=False)
    assert again is not flog and again.lines == 3
    assert [e["n"] for e in events_of(await read_all(again))] == [1, 2, 3]


async def test_a_log_cut_short_under_a_reader_becomes_a_reset(tmp_path: Path, fsync: str) -> None:
    flog = await make_store(tmp_path, fsync).open("p", "s", create=True)
    await flog.append([ev(n, pad="x" * 500) for n in range(3000)])
    reader = LogReader(flog, chunk_bytes=4096)
    await reader.seek()
    first = await reader.read(2048)
    assert seqs_of(first)[0] == 1
    old = flog.epoch
    with open(tmp_path / "sessions" / "s" / LOG_NAME, "r+b") as fh:  # someone truncates the file
        fh.truncate(len(ev(0, pad="x" * 500)) + 1)
    items: list[Item] = []
    while chunk := await reader.read(65536):
        items.extend(chunk)
    assert isinstance(items[0], Reset) and items[0].epoch == flog.epoch != old
    assert [e["n"] for e in events_of(items)] == [0]


async def test_a_log_created_by_another_process_after_open_is_the_same_epoch(tmp_path: Path, fsync: str) -> None:
    """One process opened the session before it had a log, and its index says so (no file); another
    process created the log since (its own index write lost the race). Opening it again is not a
    replaced log: same epoch, every line kept."""
    first = make_store(tmp_path, fsync)
    epoch = (await first.open("p", "s", create=True)).epoch
    first.close()
    (tmp_path / "sessions" / "s" / LOG_NAME).write_bytes(ev(1) + b"\n" + ev(2) + b"\n")
    again = await make_store(tmp_path, fsync).open("p", "s", create=False)
    assert (again.epoch, again.lines) == (epoch, 2)
