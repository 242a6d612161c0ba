"""Reading a stream's chain of logs: a fork's source up to the fork point, then its own.

A `ChainReader` keeps the `LogReader` of the log it reads between reads, so a live reader at
the tail reads each append once, without seeking again (a seek costs an index lookup and a scan
of up to 1023 lines).
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.store.base import EventLog
from gateway.store.cursor import Cursor
from gateway.stream.framing import Batch, Reset
from gateway.stream.reader import LogReader


@dataclass(frozen=True, slots=True)
class Segment:
    """Lines of one log serving positions base+1 .. base+lines, at most up to `limit`."""

    log: EventLog
    base: int
    limit: int | None

    @property
    def end(self) -> int:
        end = self.base + self.log.lines
        return end if self.limit is None else min(end, self.limit)


def cut_lines(data: bytes, keep: int) -> bytes:
    """The first `keep` lines of whole lines joined by newlines."""
    at = -1
    for _ in range(keep):
        at = data.find(b"\n", at + 1)
        if at == -1:
            return data
    return data[:at]


class ChainReader:
    """Whole lines of a chain from a position on; `reset` once a log of it started a new epoch."""

    __slots__ = ("_reader", "_segment", "position", "reset", "segments")

    def __init__(self, segments: list[Segment], position: int) -> None:
        self.segments = segments
        self.position = position
        self.reset = False
        self._reader: LogReader | None = None
        self._segment = -1

    async def read(self, budget: int) -> list[bytes]:
        """About `budget` bytes of whole lines (one line at least, when there is one); [] at the tail."""
        parts: list[bytes] = []
        used = 0
        while used < budget and not self.reset:
            found = next((i for i, s in enumerate(self.segments) if s.base <= self.position < s.end), None)
            if found is None:
                break
            seg = self.segments[found]
            if self._reader is None or self._segment != found:
                self._reader, self._segment = LogReader(seg.log), found
                local = self.position - seg.base
                await self._reader.seek(Cursor(seg.log.epoch, local) if local else None)
            items = await self._reader.read(budget - used)
            if not items:
                break
            for item in items:
                if isinstance(item, Reset):
                    self.reset = True
                    break
                if not isinstance(item, Batch):
                    self.position += 1  # an undeliverable line of a session: a position without a message
                    continue
                first, last, data = seg.base + item.first, seg.base + item.last, item.data
                if seg.limit is not None and last >= seg.limit:  # a fork's source, read to the fork point:
                    data, last = cut_lines(data, seg.limit - first + 1), seg.limit  # the next read opens
                    self._reader = None  # the next log
                parts.append(data)
                used += len(data)
                self.position = last
                if self._reader is None:
                    break
        return parts
