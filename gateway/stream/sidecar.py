"""The compact forms of a session's finished runs, cached in a sidecar file beside its log.

    <root>/sessions/<session>/agui-events.compact

The log is never touched: the sidecar is a cache of what `compact.Compactor` makes of the log from
seq 1 up to the end of its last finished run (`RUN_FINISHED` or `RUN_ERROR`). It starts with the
epoch it was built for; then come records, each covering a contiguous range of seqs and the byte
range those lines take in the log:

    R <first> <last> <start> <end> <count> <seqs bytes> <data bytes>\\n   compact events (E: ending a run)
    <seq>,<seq>,...\\n                                                 the seq of each event
    <event>\\n<event>\\n...                                             the events, one per line
    K <seq> <start> <end> <reason> <bytes>\\n                           a line that is skipped

Records are cut where the compactor has nothing open, so every record boundary is a point where
a client that stops there has exactly the raw events up to it: serving starts at any record. A
record holds about one frame of events, so the WebSocket encoding of a record is two splices.
Each run is compacted on its own and its last record is an `E` record, so the sidecar is the same
bytes however its builds were split; a build cut short (a crash) is redone from the last `E`.

Trust: the sidecar is used only for the epoch the log has now, only as far as its records are
whole, contiguous and inside the log, and only if the log's line after the last record starts
at the byte offset the sidecar claims. Anything else is cut off and rebuilt from the log, under
an exclusive flock so two streams (or two gateway processes) never build the same part twice.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio.to_thread

from gateway.store.base import EventLog
from gateway.store.lines import BadLine
from gateway.stream.compact import is_run_end
from gateway.stream.framing import Compact, Skipped
from gateway.stream.stretch import compact_stretch, last_run_end

log_ = logging.getLogger("gateway.sidecar")

SIDECAR_NAME = "agui-events.compact"
_MAGIC = b"AGUI-COMPACT 1 "
_HEAD_MAX = 160
SLICE = 0.05
"""CPU seconds a paced build works, under the lock, before it rests (at most one run more)."""
_FLAGS = os.O_CLOEXEC | os.O_NOFOLLOW


Build = Callable[["Sidecar", str, int, int, dict[int, BadLine], tuple[int, int] | None], Awaitable[None]]
"""Extends a sidecar elsewhere: `Sidecar.extend_file`'s arguments (sidecar, epoch, lines, end, bad
lines, distrust)."""


@dataclass(frozen=True, slots=True)
class Record:
    """Where one record sits in the sidecar; `compact` is False for a skipped line."""

    first: int
    last: int
    start: int  # log bytes
    end: int
    offset: int  # sidecar offset of the body (after the header line)
    size: int  # body bytes
    count: int
    seqs: int  # bytes of the seq list (compact records)
    reason: str  # skipped records
    skipped_bytes: int
    ends_run: bool = False

    @property
    def next(self) -> int:
        return self.offset + self.size


# -- the sidecar file ----------------------------------------------------------------------------------


def _encode(rec: Compact | BadLine) -> bytes:
    if isinstance(rec, BadLine):
        return b"K %d %d %d %s %d\n" % (rec.seq, rec.offset, rec.offset + rec.length + 1, rec.reason.encode(),
                                         rec.length)
    count = rec.seqs.count(b",") + 1
    kind = b"E" if is_run_end(rec.data[rec.data.rfind(b"\n") + 1 :]) else b"R"
    return kind + b" %d %d %d %d %d %d %d\n%s\n%s\n" % (rec.first, rec.last, rec.start, rec.end, count, len(rec.seqs),
                                                  len(rec.data), rec.seqs, rec.data)


def _parse_head(raw: bytes, offset: int) -> Record | None:
    nl = raw.find(b"\n")
    if nl == -1:
        return None
    parts = raw[:nl].split(b" ")
    body = offset + nl + 1
    try:
        if parts[0] in (b"R", b"E") and len(parts) == 8:
            first, last, start, end, count, seqs, data = (int(p) for p in parts[1:])
            return Record(first, last, start, end, body, seqs + 1 + data + 1, count, seqs, "", 0, parts[0] == b"E")
        if parts[0] == b"K" and len(parts) == 6 and parts[4] in (b"corrupt", b"oversize"):
            seq, start, end, nbytes = int(parts[1]), int(parts[2]), int(parts[3]), int(parts[5])
            return Record(seq, seq, start, end, body, 0, 0, 0, parts[4].decode(), nbytes)
    except ValueError:
        return None
    return None


def read_records(fd: int, epoch: str, lines: int, end: int) -> tuple[list[Record], int]:
    """The records of the sidecar that hold for a log of this epoch with `lines` lines in `end`
    bytes, and the offset where the valid part of the file ends (0: not even the header)."""
    head = _MAGIC + epoch.encode() + b"\n"
    size = os.fstat(fd).st_size
    if os.pread(fd, len(head), 0) != head:
        return [], 0
    records: list[Record] = []
    offset, seq, byte = len(head), 1, 0
    while offset < size:
        rec = _parse_head(os.pread(fd, _HEAD_MAX, offset), offset)
        if (rec is None or rec.next > size or rec.first != seq or rec.start != byte or rec.last < rec.first
                or rec.end <= rec.start or rec.last > lines or rec.end > end):
            break
        records.append(rec)
        offset, seq, byte = rec.next, rec.last + 1, rec.end
    return records, offset


def pause(worked: float, share: float) -> float:
    """Seconds to rest after `worked` seconds, so that work is `share` of the time."""
    return worked * (1 - share) / share


def built(records: list[Record]) -> list[Record]:
    """The records up to the last one that ends a run: where an extension resumes (a record
    boundary inside a run is not one a build in one pass would have, as to what state is known)."""
    cut = len(records)
    while cut and not records[cut - 1].ends_run:
        cut -= 1
    return records[:cut]


def read_body(fd: int, rec: Record) -> Compact | Skipped | None:
    """A record's content, or None if its bytes are not what its header says (damaged)."""
    if not rec.size:
        return Skipped(rec.first, rec.reason, rec.skipped_bytes)
    body = os.pread(fd, rec.size, rec.offset)
    if (len(body) != rec.size or body[rec.seqs : rec.seqs + 1] != b"\n" or body[-1:] != b"\n"
            or body.count(b"\n") != rec.count + 1 or body.count(b",", 0, rec.seqs) != rec.count - 1
            or body[body.rfind(b",", 0, rec.seqs) + 1 : rec.seqs] != b"%d" % rec.last):
        return None
    return Compact(rec.first, rec.last, rec.start, rec.end, body[: rec.seqs], body[rec.seqs + 1 : -1])


def _stamp(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return st.st_size, st.st_mtime_ns


def _nofollow(path: str, flags: int) -> int:
    return os.open(path, flags | _FLAGS)


def _bad_lines(log: EventLog, first: int, last: int) -> dict[int, BadLine]:
    bad: dict[int, BadLine] = {}
    seq = first
    while (b := log.next_bad(seq)) is not None and b.seq <= last:
        bad[b.seq] = b
        seq = b.seq + 1
    return bad


class Sidecar:
    """One session's sidecar: brought up to date with the log's finished runs on demand."""

    def __init__(self, session_dir: Path, log_name: str) -> None:
        self.path = session_dir / SIDECAR_NAME
        self.log_path = session_dir / log_name
        self.floor = 0  # log bytes before it are not in `log_path` (see `CopiedSidecar`)
        self.on_record: Callable[[Record], None] | None = None
        """Called in the build's thread after each record is written (pacing, progress)."""

    def open(self) -> int:
        """The sidecar's descriptor; a symbolic link in its place is removed, never followed."""
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT | _FLAGS, 0o644)
        except OSError as exc:
            if exc.errno != errno.ELOOP:
                raise
        self.path.unlink()
        return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | _FLAGS, 0o644)

    def reader(self) -> io.FileIO:
        """The sidecar for reading records (a file object, so it is closed with its holder)."""
        return open(self.path, "rb", buffering=0, opener=_nofollow)

    async def update(self, log: EventLog, build: Build | None = None) -> list[Record]:
        """The records for the log as it is now, extended first to its last finished run.

        [] when there is nothing to serve from it: an empty log, a log replaced meanwhile, or a
        sidecar that cannot be written or read (a read-only volume): the stream is then raw.
        `build` does the extension elsewhere (the background builder's process); then it is [].
        """
        epoch, lines, end = log.epoch, log.lines, log.end
        if not end:
            return []
        bad = _bad_lines(log, 1, lines)
        try:
            fd = await anyio.to_thread.run_sync(self.open)
        except OSError as exc:
            log_.warning("compact view unavailable, serving raw", extra={"path": str(self.path), "error": str(exc)})
            return []
        try:
            records, valid = await anyio.to_thread.run_sync(read_records, fd, epoch, lines, end)
            distrust = None
            if records and await log.offset_of(records[-1].last + 1) != records[-1].end:
                valid, distrust = 0, _stamp(fd)  # its byte ranges are not this log's lines: start afresh
            done = built(records) if valid else []
            await self._prepare(log, done[-1].end if done else 0, end)
            if build is not None:
                behind = await anyio.to_thread.run_sync(self._behind, fd, records, valid, end, bad)
                if behind or distrust is not None:
                    await build(self, epoch, lines, end, bad, distrust)
                return []
            records = await anyio.to_thread.run_sync(self.extend_file, fd, epoch, lines, end, bad, records, valid,
                                                     distrust)
        except OSError as exc:
            if log.epoch == epoch:  # not just the log deleted under us
                log_.warning("compact view unavailable, serving raw",
                             extra={"path": str(self.path), "error": str(exc)})
            return []
        finally:
            os.close(fd)
        return records if log.epoch == epoch else []

    def extend_file(self, fd: int, epoch: str, lines: int, end: int, bad: dict[int, BadLine], records: list[Record],
                    valid: int, distrust: tuple[int, int] | None = None, share: float = 1) -> list[Record]:
        """`records` and `valid` as read before the lock; `distrust`: the sidecar's size and time
        when its records were found not to be this log's (it is emptied under the lock unless
        another build rewrote it meanwhile). With `share` < 1, the build rests between slices of
        `SLICE` CPU seconds, the lock let go, so that it takes that share of a core and a stream
        that needs the rest builds it meanwhile."""
        if valid and not self._behind(fd, records, valid, end, bad):
            return records
        stop: tuple[int, int] | None = None
        while True:
            started = time.process_time()
            with self._locked(fd):
                if distrust is not None and _stamp(fd) == distrust:
                    os.ftruncate(fd, 0)
                distrust = None
                records, stop = self._extend(fd, epoch, lines, end, bad, stop, SLICE if share < 1 else None)
            if stop is None:
                return records
            time.sleep(pause(time.process_time() - started, share))

    def _behind(self, fd: int, records: list[Record], valid: int, end: int, bad: dict[int, BadLine]) -> bool:
        """Whether a build has work: the sidecar is not whole (its last record included: a crash
        tears the tail), or a run finished after its records."""
        if valid and (valid != os.fstat(fd).st_size or (records and read_body(fd, records[-1]) is None)):
            return True
        return self._run_end_after(records if valid else [], end, bad)

    def _run_end_after(self, records: list[Record], end: int, bad: dict[int, BadLine]) -> bool:
        seq, offset = (records[-1].last + 1, records[-1].end) if records else (1, 0)
        lfd = os.open(self.log_path, os.O_RDONLY | _FLAGS)
        try:
            return last_run_end(lfd, seq, offset, end, bad) is not None
        finally:
            os.close(lfd)

    @staticmethod
    @contextlib.contextmanager
    def _locked(fd: int) -> Iterator[None]:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    def _extend(self, fd: int, epoch: str, lines: int, end: int, bad: dict[int, BadLine],
                stop: tuple[int, int] | None = None, budget: float | None = None,
                ) -> tuple[list[Record], tuple[int, int] | None]:
        """Under the lock: cut what does not hold, then compact from there to the last run end
        (`stop`, if known), or for `budget` CPU seconds and up to a run end: then it returns
        where it was going, else None."""
        records, valid = read_records(fd, epoch, lines, end)
        if valid and valid < os.fstat(fd).st_size and read_records(fd, epoch, sys.maxsize, sys.maxsize)[1] > valid:
            return records, None  # a build that saw more of this epoch's log is ahead: nothing to cut or add
        if valid == 0:
            os.ftruncate(fd, 0)
            os.pwrite(fd, _MAGIC + epoch.encode() + b"\n", 0)
        records = built(records)
        while records and read_body(fd, records[-1]) is None:  # torn, with bytes after it
            records = built(records[:-1])
        valid = records[-1].next if records else len(_MAGIC) + len(epoch) + 1
        os.ftruncate(fd, valid)
        seq, offset = (records[-1].last + 1, records[-1].end) if records else (1, 0)
        if offset < self.floor:
            return records, None  # cut by another process meanwhile: the next update builds it
        lfd = os.open(self.log_path, os.O_RDONLY | _FLAGS)
        try:
            found = stop if stop is not None and stop[1] > offset else last_run_end(lfd, seq, offset, end, bad)
            if found is None:
                return records, None
            started, cpu, kept = time.monotonic(), time.process_time(), len(records)
            for rec in compact_stretch(lfd, seq, offset, found[1], bad):
                data = _encode(rec)
                os.pwrite(fd, data, valid)
                head = _parse_head(data[:_HEAD_MAX], valid)
                assert head is not None
                records.append(head)
                valid += len(data)
                if self.on_record is not None:
                    self.on_record(head)
                if budget is not None and head.ends_run and time.process_time() - cpu >= budget:
                    return records, found
        finally:
            os.close(lfd)
        log_.info("compacted finished runs", extra={
            "session": self.path.parent.name, "epoch": epoch, "first": seq, "last": found[0],
            "log_bytes": found[1] - offset, "records": len(records) - kept, "kept": kept, "bytes": valid,
            "seconds": round(time.monotonic() - started, 3)})
        return records, None

    async def _prepare(self, log: EventLog, start: int, stop: int) -> None:
        """Before a build reads the log's bytes `start..stop`: the log file holds them already."""

    async def compact_part(self, first: int, offset: int, stop: int, log: EventLog) -> list[Compact | BadLine]:
        """`compact_range` in a worker thread."""
        return await anyio.to_thread.run_sync(self.compact_range, first, offset, stop, log)

    def compact_range(self, first: int, offset: int, stop: int, log: EventLog) -> list[Compact | BadLine]:
        """The compact form of one stretch of the log, in memory (a resume inside a record)."""
        lfd = os.open(self.log_path, os.O_RDONLY | _FLAGS)
        try:
            return list(compact_stretch(lfd, first, offset, stop, _bad_lines(log, first, log.lines)))
        finally:
            os.close(lfd)
