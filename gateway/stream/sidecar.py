"""The compact forms of a session's finished runs, cached in a sidecar file beside its log.

    <root>/sessions/<session>/agui-events.compact

The log is never touched: the sidecar is a cache of what `compact.Compactor` makes of the log from
seq 1 up to the end of its last finished run (`RUN_FINISHED` or `RUN_ERROR`). It starts with the
epoch it was built for; then come records, each covering a contiguous range of seqs and the byte
range those lines take in the log:

    R <first> <last> <start> <end> <count> <seqs bytes> <data bytes>\\n   compact events
    <seq>,<seq>,...\\n                                                 the seq of each event
    <event>\\n<event>\\n...                                             the events, one per line
    K <seq> <start> <end> <reason> <bytes>\\n                           a line that is skipped

Records are cut where the compactor has nothing open, so every record boundary is a point where
a client that stops there has exactly the raw events up to it: serving starts at any record. A
record holds about one frame of events, so the WebSocket encoding of a record is two splices.

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
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio.to_thread

from gateway.store.base import EventLog
from gateway.store.lines import BadLine
from gateway.stream.compact import Compactor, Event, is_run_end
from gateway.stream.framing import Compact, Skipped

log_ = logging.getLogger("gateway.sidecar")

SIDECAR_NAME = "agui-events.compact"
RECORD_BYTES = 64 * 1024
"""Event bytes after which a record is closed (about one WebSocket frame)."""
_MAGIC = b"AGUI-COMPACT 1 "
_HEAD_MAX = 160
_READ = 1 << 20
_FLAGS = os.O_CLOEXEC | os.O_NOFOLLOW


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

    @property
    def next(self) -> int:
        return self.offset + self.size


# -- compacting a stretch of the log (runs in a worker thread) -------------------------------------


def _log_lines(fd: int, seq: int, offset: int, stop: int,
               bad: dict[int, BadLine]) -> Iterator[tuple[int, int, bytes | None]]:
    """(seq, end offset, line) for the lines from `offset` to `stop`; line None for a bad line,
    whose bytes are never read (it may be far larger than any event)."""
    buf, pos = b"", offset  # buf holds the log from `pos`
    while offset < stop:
        b = bad.get(seq)
        if b is not None:
            offset = b.offset + b.length + 1
            buf, pos = b"", offset
            yield seq, offset, None
            seq += 1
            continue
        nl = buf.find(b"\n", offset - pos)
        if nl == -1:
            more = os.pread(fd, min(_READ, stop - pos - len(buf)), pos + len(buf))
            if not more:
                raise OSError(f"log ended at byte {pos + len(buf)}, before {stop}")
            buf = buf[offset - pos :] + more
            pos = offset
            continue
        line = buf[offset - pos : nl]
        offset = pos + nl + 1
        yield seq, offset, line
        seq += 1


def compact_stretch(fd: int, seq: int, offset: int, stop: int, bad: dict[int, BadLine],
                    record_bytes: int = RECORD_BYTES) -> Iterator[Compact | BadLine]:
    """The compact form of the log lines from (`seq`, `offset`) up to byte `stop`, in records.

    A record closes once it holds `record_bytes` of events, always between two compact events,
    so no merge is ever open across it.
    """
    compactor = Compactor()
    out = compactor.out
    prev = cur = (seq - 1, offset)  # (seq, end offset) of the last two lines fed: what events end at
    first, start = seq, offset
    events: list[bytes] = []
    seqs: list[bytes] = []
    size = last = 0

    def close() -> Compact:
        nonlocal first, start, size
        end = cur[1] if last == cur[0] else prev[1]
        rec = Compact(first, last, start, end, b",".join(seqs), b"\n".join(events))
        first, start, size = last + 1, end, 0
        events.clear()
        seqs.clear()
        return rec

    for n, end, line in _log_lines(fd, seq, offset, stop, bad):
        prev, cur = cur, (n, end)
        if line is None:
            b = bad[n]
            compactor.skip(Skipped(n, b.reason, b.length))
        else:
            compactor.feed(n, line)
        for item in out:
            if isinstance(item, Event):
                events.append(item.data)
                seqs.append(b"%d" % item.seq)
                size += len(item.data) + 1
                last = item.seq
            else:
                if events:
                    yield close()
                yield bad[item.seq]
                first, start = item.seq + 1, end
        out.clear()
        if size >= record_bytes:
            yield close()
    compactor.finish()
    for item in out:
        assert isinstance(item, Event)  # finish only closes merges
        events.append(item.data)
        seqs.append(b"%d" % item.seq)
        last = item.seq
    if events:
        yield close()


def last_run_end(fd: int, seq: int, offset: int, stop: int, bad: dict[int, BadLine]) -> tuple[int, int] | None:
    """(seq, end offset) of the last RUN_FINISHED or RUN_ERROR line from (`seq`, `offset`) to `stop`.

    Only lines that mention one of those names are parsed; the rest is counted at memory speed.
    """
    found = None
    pos = offset
    carry = b""
    while pos < stop:
        chunk = carry + os.pread(fd, min(_READ, stop - pos), pos)
        base = pos - len(carry)
        if len(chunk) == len(carry):
            raise OSError(f"log ended at byte {pos}, before {stop}")
        pos = base + len(chunk)
        cut = chunk.rfind(b"\n") + 1
        chunk, carry = chunk[:cut], chunk[cut:]
        for name in (b"RUN_FINISHED", b"RUN_ERROR"):
            i = chunk.rfind(name)
            while i != -1:
                line_start = chunk.rfind(b"\n", 0, i) + 1
                line_end = chunk.index(b"\n", i)
                n = seq + chunk.count(b"\n", 0, line_start)
                if found is not None and n <= found[0]:
                    break
                if n not in bad and is_run_end(chunk[line_start:line_end]):
                    found = (n, base + line_end + 1)
                    break
                i = chunk.rfind(name, 0, line_start)
        seq += chunk.count(b"\n")
    return found


# -- the sidecar file ----------------------------------------------------------------------------------


def _encode(rec: Compact | BadLine) -> bytes:
    if isinstance(rec, BadLine):
        return b"K %d %d %d %s %d\n" % (rec.seq, rec.offset, rec.offset + rec.length + 1, rec.reason.encode(),
                                         rec.length)
    count = rec.seqs.count(b",") + 1
    return b"R %d %d %d %d %d %d %d\n%s\n%s\n" % (rec.first, rec.last, rec.start, rec.end, count, len(rec.seqs),
                                                  len(rec.data), rec.seqs, rec.data)


def _parse_head(raw: bytes, offset: int) -> Record | None:
    nl = raw.find(b"\n")
    if nl == -1:
        return None
    parts = raw[:nl].split(b" ")
    body = offset + nl + 1
    try:
        if parts[0] == b"R" and len(parts) == 8:
            first, last, start, end, count, seqs, data = (int(p) for p in parts[1:])
            return Record(first, last, start, end, body, seqs + 1 + data + 1, count, seqs, "", 0)
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

    async def update(self, log: EventLog) -> list[Record]:
        """The records for the log as it is now, extended first to its last finished run.

        [] when there is nothing to serve from it: an empty log, a log replaced meanwhile, or a
        sidecar that cannot be written or read (a read-only volume): the stream is then raw.
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
            if records and await log.offset_of(records[-1].last + 1) != records[-1].end:
                valid = 0  # its byte ranges are not this log's lines: start afresh
            await self._prepare(log, records[-1].end if records and valid else 0, end)
            records = await anyio.to_thread.run_sync(self._update, fd, epoch, lines, end, bad, records, valid)
        except OSError as exc:
            if log.epoch == epoch:  # not just the log deleted under us
                log_.warning("compact view unavailable, serving raw",
                             extra={"path": str(self.path), "error": str(exc)})
            return []
        finally:
            os.close(fd)
        return records if log.epoch == epoch else []

    def _update(self, fd: int, epoch: str, lines: int, end: int, bad: dict[int, BadLine], records: list[Record],
                valid: int) -> list[Record]:
        if valid and valid == os.fstat(fd).st_size and not self._run_end_after(records, end, bad):
            return records  # whole, and no run finished after it
        with self._locked(fd):
            if not valid:
                os.ftruncate(fd, 0)
            return self._extend(fd, epoch, lines, end, bad)

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

    def _extend(self, fd: int, epoch: str, lines: int, end: int, bad: dict[int, BadLine]) -> list[Record]:
        """Under the lock: cut what does not hold, then compact from there to the last run end."""
        records, valid = read_records(fd, epoch, lines, end)
        if valid == 0:
            os.ftruncate(fd, 0)
            os.pwrite(fd, _MAGIC + epoch.encode() + b"\n", 0)
            valid = len(_MAGIC) + len(epoch) + 1
        os.ftruncate(fd, valid)
        seq, offset = (records[-1].last + 1, records[-1].end) if records else (1, 0)
        if offset < self.floor:
            return records  # cut by another process meanwhile: the next update builds it
        lfd = os.open(self.log_path, os.O_RDONLY | _FLAGS)
        try:
            found = last_run_end(lfd, seq, offset, end, bad)
            if found is None:
                return records
            started, kept = time.monotonic(), len(records)
            for rec in compact_stretch(lfd, seq, offset, found[1], bad):
                data = _encode(rec)
                os.pwrite(fd, data, valid)
                head = _parse_head(data[:_HEAD_MAX], valid)
                assert head is not None
                records.append(head)
                valid += len(data)
        finally:
            os.close(lfd)
        log_.info("compacted finished runs", extra={
            "session": self.path.parent.name, "epoch": epoch, "first": seq, "last": found[0],
            "log_bytes": found[1] - offset, "records": len(records) - kept, "kept": kept, "bytes": valid,
            "seconds": round(time.monotonic() - started, 3)})
        return records

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
