"""The reader of the compact view: finished runs from the sidecar, then the raw reader.

It hands out the same items as `LogReader` plus `Compact` records, and is driven by the same
pump. Where it starts inside a record (a resume after a cursor that is not a record boundary),
it compacts the rest of that record's stretch of the log on the spot; every later record comes
from the sidecar. Once past the last finished run it is the raw reader, positioned right after
it, so the hand-over loses and repeats nothing; a log that gets a new epoch meanwhile is the raw
reader's `reset`.
"""

from __future__ import annotations

import bisect
import io
import logging

import anyio.to_thread

from gateway.store.base import EventLog
from gateway.store.cursor import Cursor, format_cursor
from gateway.store.lines import BadLine
from gateway.stream.framing import BATCH_OVERHEAD, Compact, Item, Skipped
from gateway.stream.reader import LogReader, start_of
from gateway.stream.sidecar import Record, Sidecar, read_body

log = logging.getLogger("gateway.compact")


class CompactReader:
    """A `Reader` of the compact view of one session's log."""

    def __init__(self, log: EventLog, sidecar: Sidecar) -> None:
        self._log = log
        self._sidecar = sidecar
        self._raw = LogReader(log)
        self._records: list[Record] = []
        self._next = 0  # index of the next record to hand out
        self._pending: list[Compact | BadLine] = []  # the on-the-spot part, handed out first
        self._compact = False  # still in the compact part
        self._file: io.FileIO | None = None  # the sidecar, closed with the reader
        self._epoch = log.epoch
        self.seq = 1  # next raw seq to cover

    @property
    def epoch(self) -> str:
        """The epoch of what was handed out last: after the hand-over, the raw reader's (it resets)."""
        return self._epoch if self._compact else self._raw.epoch

    @epoch.setter
    def epoch(self, value: str) -> None:
        self._epoch = value

    @property
    def head(self) -> str | None:
        return self._raw.head

    @property
    def cursor(self) -> str | None:
        if self._compact:
            return format_cursor(self.epoch, self.seq - 1) if self.seq > 1 else None
        return self._raw.cursor

    @property
    def stopped(self) -> bool:
        return not self._compact and self._raw.stopped

    async def seek(self, after: Cursor | None = None, tail: int | None = None) -> bool:
        """Position before the first event to deliver; True if `after` could not be honoured."""
        log = self._log
        self.epoch = log.epoch
        start, reset = start_of(log, after, tail)
        records = await self._sidecar.update(log)  # [] if the log was replaced meanwhile: the raw reader resets
        self._records, self.seq, self._pending = records, start, []
        covered = records[-1].last if records else 0
        if start > covered:
            await self._raw.seek(Cursor(self.epoch, start - 1) if start > 1 else None)
            self._compact = False
            return reset
        i = bisect.bisect_right([r.first for r in records], start) - 1
        rec = records[i]
        self._next = i
        if rec.first < start:
            offset = await log.offset_of(start)
            self._pending = await self._sidecar.compact_part(start, offset, rec.end, log)
            self._next = i + 1
        self._file = await anyio.to_thread.run_sync(self._sidecar.reader)
        self._compact = True
        return reset

    async def read(self, budget: int) -> list[Item]:
        if not self._compact:
            return await self._raw.read(budget)
        items: list[Item] = []
        used = 0
        while used < budget and self._compact:
            if self._log.epoch != self.epoch:
                await self._hand_over()  # the raw reader notices the new epoch and resets
                break
            item: Item | None
            if self._pending:
                pending = self._pending.pop(0)
                item = Skipped(pending.seq, pending.reason, pending.length) if isinstance(pending, BadLine) else pending
            elif self._next < len(self._records):
                assert self._file is not None
                rec = self._records[self._next]
                item = read_body(self._file.fileno(), rec)
                if item is None:  # damaged since it was checked: compact this stretch here instead
                    log.warning("compact sidecar record damaged; compacting from the log",
                                extra={"session": self._sidecar.path.parent.name, "first": rec.first,
                                       "last": rec.last})
                    self._pending = await self._sidecar.compact_part(rec.first, rec.start, rec.end, self._log)
                    (self._sidecar.path).unlink(missing_ok=True)  # rebuilt by the next stream
                    self._next += 1
                    continue
                self._next += 1
            else:
                await self._hand_over()
                break
            if items and isinstance(item, Compact) and used + len(item.data) + len(item.seqs) > budget:
                self._push_back(item)
                break
            items.append(item)
            if isinstance(item, Compact):
                used += len(item.data) + len(item.seqs) + BATCH_OVERHEAD
                self.seq = item.last + 1
            else:
                used += BATCH_OVERHEAD
                self.seq = item.seq + 1
        if not items and not self._compact:
            return await self._raw.read(budget)
        return items

    def _push_back(self, item: Compact) -> None:
        self._pending.insert(0, item)

    async def _hand_over(self) -> None:
        self._compact = False
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._log.epoch == self.epoch:
            await self._raw.seek(Cursor(self.epoch, self.seq - 1) if self.seq > 1 else None)

    async def wait(self) -> None:
        await self._raw.wait()
