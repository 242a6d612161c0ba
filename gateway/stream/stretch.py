"""Compacting a stretch of a log file into sidecar records (runs in a worker thread).

The builder reads the log at its own byte offsets, in chunks, and holds one chunk and one open
merge at a time; bad lines are known from the store and their bytes are never read.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from gateway.store.lines import BadLine
from gateway.stream.compact import Compactor, Event, is_run_end
from gateway.stream.framing import Compact, Skipped

RECORD_BYTES = 64 * 1024
"""Event bytes after which a record is closed (about one WebSocket frame)."""
_READ = 1 << 20


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
    so no merge is ever open across it, and at the end of each run. Each run is compacted on its
    own (a fresh compactor after every run end), so the sidecar is the same bytes whether it was
    built in one pass or extended run by run.
    """
    compactor = Compactor()
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
        ended = line is not None and is_run_end(line)
        if line is None:
            b = bad[n]
            compactor.skip(Skipped(n, b.reason, b.length))
        else:
            compactor.feed(n, line)
        out = compactor.out
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
        if ended:
            compactor = Compactor()
        if size >= record_bytes or (ended and events):
            yield close()
    compactor.finish()
    out = compactor.out
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
