"""What one session's log looks like to its readers and writers, kept without any I/O.

`LogState` is the bookkeeping half of a `FileLog`: the driver in `filelog.py` does the reads,
writes, fsyncs and index writes, and tells the state what happened; the state decides what
readers may see. Keeping it free of I/O makes its rules testable without files:

- `end`/`lines`: the *published* prefix: whole, classified lines, durable when fsync is on.
  Readers never look past it, which is how a torn or unsynced tail stays invisible.
- `written_end`/`written_lines`: what this process wrote or took in, ahead of `end` while an
  fsync is pending (the appends waiting in `commit.unsynced`).
- `records`: byte offset of every INDEX_EVERY-th line, for O(1) seeks; `bad`: lines that cannot
  be delivered (corrupt, oversize), which readers turn into `skipped`.
- `changes`: its version is bumped on every visible change; followers wait for it to move.
"""

from __future__ import annotations

import bisect
import itertools
from collections import deque

import anyio

from gateway.store.changes import Changes
from gateway.store.index import DIRTY
from gateway.store.lines import INDEX_EVERY, BadLine

RECENT_BYTES = 64 * 1024
"""Bytes of its latest appends a log keeps in memory: followers at the live edge read them from
there instead of from the file, once per event instead of once per event per follower."""

IndexRecord = tuple[int, int, int]
"""(k, offset, flags) of a new index point, for the driver to write to the index file."""


class Commit:
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


class LogState:
    def __init__(self, epoch: str, *, batched: bool = False) -> None:
        self.epoch = epoch
        self.end = self.lines = 0
        self.written_end = self.written_lines = 0
        self.records: list[int] = []
        self.commit = Commit()
        self.changes = Changes(batched=batched)  # batched: published by commit cycles
        self._bad: dict[int, BadLine] = {}
        self._bad_seqs: list[int] = []
        self._recent: deque[tuple[int, bytes]] = deque()  # (offset, data) of the latest appends
        self._recent_bytes = 0

    # -- readers --------------------------------------------------------------------------------

    @property
    def bad_lines(self) -> int:
        return len(self._bad_seqs)

    def next_bad(self, seq: int) -> BadLine | None:
        i = bisect.bisect_left(self._bad_seqs, seq)
        return self._bad[self._bad_seqs[i]] if i < len(self._bad_seqs) else None

    def seek_point(self, seq: int) -> tuple[int, int]:
        """(offset, lines to skip from there) to reach line `seq` (1 <= seq <= lines) from the
        nearest index point at or before it: at most INDEX_EVERY - 1 lines to skip."""
        if not 1 <= seq <= self.lines:
            raise ValueError(f"seq {seq} outside 1..{self.lines}")
        k = (seq - 1) // INDEX_EVERY
        return (self.records[k - 1] if k else 0), seq - (k * INDEX_EVERY + 1)

    def recent(self, offset: int, size: int) -> bytes | None:
        """Up to `size` published bytes at `offset` from memory, or None if they are not held.

        The appends held from `offset` on come joined: a replay of the last 50 events, or a seek
        through them, takes one call, not one per append (each of which looked for its piece)."""
        size = min(size, self.end - offset)
        held = self._recent
        i = bisect.bisect_right(held, offset, key=_start) - 1
        if i < 0:
            return None
        start, data = held[i]
        if offset >= start + len(data):
            return None
        if size <= 0:
            return b""  # at (or past) what is published: nothing to read yet
        first = data[offset - start : offset - start + size]
        if len(first) == size or i + 1 == len(held):
            return first
        parts, got, at = [first], len(first), start + len(data)
        for piece_start, data in itertools.islice(held, i + 1, None):
            if piece_start != at:
                break  # lines another process appended lie between: not held
            parts.append(data[: size - got])
            got, at = got + len(parts[-1]), at + len(data)
            if got >= size:
                break
        return b"".join(parts)

    # -- writers ----------------------------------------------------------------------------------

    def restore(self, records: list[int]) -> None:
        """Start from trusted index points: everything up to the last one is published and synced."""
        self.records = records
        self.end = self.written_end = records[-1] if records else 0
        self.lines = self.written_lines = len(records) * INDEX_EVERY
        self.commit.synced_to = self.end

    def add_bad(self, bad: BadLine) -> None:
        if bad.seq not in self._bad:
            self._bad[bad.seq] = bad
            bisect.insort(self._bad_seqs, bad.seq)

    def wrote(self, start: int, data: bytes, nlines: int, points: list[tuple[int, int]]) -> None:
        """This process appended `data` (`nlines` lines) at `start`; visible once synced."""
        self._remember(start, data)
        self.written_end += len(data)
        self.written_lines += nlines
        self.commit.unsynced.append((self.written_end, self.written_lines, points))

    def synced(self, upto: int) -> list[IndexRecord]:
        """Bytes up to `upto` are durable: publish the appends they complete."""
        commit = self.commit
        commit.synced_to = max(commit.synced_to, upto)
        points: list[tuple[int, int]] = []
        end = lines = None
        while commit.unsynced and commit.unsynced[0][0] <= upto:
            end, lines, pts = commit.unsynced.popleft()
            points.extend(pts)
        if end is None or lines is None:
            return []
        return self.publish(end, lines, points)

    def took_in(self, nbytes: int, nlines: int, bad: list[BadLine], points: list[tuple[int, int]]) -> list[IndexRecord]:
        """Lines another writer appended were classified: publish them (the caller synced ours first)."""
        for b in bad:
            self.add_bad(b)
        self.written_end += nbytes
        self.written_lines += nlines
        self.commit.synced_to = self.written_end
        return self.publish(self.written_end, self.written_lines, points)

    def publish(self, end: int, lines: int, points: list[tuple[int, int]]) -> list[IndexRecord]:
        """Make everything up to `end` visible; returns the index points that are new."""
        new: list[IndexRecord] = []
        for seq, offset in points:
            k = (seq - 1) // INDEX_EVERY - 1
            if k == len(self.records):
                lo = bisect.bisect_left(self._bad_seqs, k * INDEX_EVERY + 1)
                dirty = lo < len(self._bad_seqs) and self._bad_seqs[lo] < seq
                self.records.append(offset)
                new.append((k, offset, DIRTY if dirty else 0))
        self.end, self.lines = end, lines
        self.changes.notify()
        return new

    def reset(self, epoch: str) -> None:
        """Forget the log (it is gone, replaced or cut short): a new incarnation under `epoch`."""
        self.epoch = epoch
        self.end = self.lines = self.written_end = self.written_lines = 0
        self.commit.retired = True
        self.commit = Commit()
        self.records = []
        self._bad.clear()
        self._bad_seqs = []
        self.forget_recent()
        self.changes.notify()

    def forget_recent(self) -> None:
        self._recent.clear()
        self._recent_bytes = 0

    def _remember(self, start: int, data: bytes) -> None:
        if len(data) > RECENT_BYTES:
            self.forget_recent()
            return
        self._recent.append((start, data))
        self._recent_bytes += len(data)
        while self._recent_bytes > RECENT_BYTES:
            self._recent_bytes -= len(self._recent.popleft()[1])


def _start(piece: tuple[int, bytes]) -> int:
    return piece[0]
