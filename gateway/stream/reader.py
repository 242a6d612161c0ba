"""The one cursor: reads a session's log from a start position to the end, then keeps reading.

History and live are the same loop over the same file, so there is no hand-over where events
could be lost or doubled. The reader holds at most one chunk of the log (plus, for a single
event larger than a chunk, that event), and reads only when its caller asks for the next frame,
so a slow client slows the reader instead of filling memory.

A stream may also end at a line of the log (`StopCondition`): a run's SSE response is the
session's reader, until the run's terminal event.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

import anyio

from gateway.store.base import EventLog, StoreError
from gateway.store.cursor import Cursor, format_cursor
from gateway.stream.framing import BATCH_OVERHEAD, Batch, Item, Reset, Skipped, cut_batch

CHUNK_BYTES = 512 * 1024


class Mark(NamedTuple):
    """Where a `LogReader` stands: the next line to hand out, and its byte offset, in an epoch."""

    epoch: str
    seq: int
    offset: int


class StopCondition(Protocol):
    """Where a stream ends besides the client and the gateway: at a line of the log."""

    @property
    def done(self) -> anyio.Event:
        """Set once the stopping line can no longer come (its writer ended without one)."""
        ...

    def stop_offset(self, data: bytes) -> int:
        """Offset just past the stopping line in `data` (whole lines joined by b"\\n"), or -1."""
        ...


class Reader(Protocol):
    """What the pump and the transports read from; every reader means the same by each member."""

    epoch: str

    @property
    def head(self) -> str | None:
        """Cursor of the last line in the log right now (None for an empty log)."""
        ...

    @property
    def cursor(self) -> str | None:
        """Cursor of the last line handed out by `read` (None before the first)."""
        ...

    @property
    def stopped(self) -> bool:
        """True once the stream is over: its stop condition was met (nothing more will be handed out)."""
        ...

    async def read(self, budget: int) -> list[Item]:
        """Items ready now, up to about `budget` encoded bytes; never blocks for new lines.

        [] means caught up with the log (or `stopped`); a single event larger than `budget`
        is returned alone.
        """
        ...

    async def wait(self) -> None:
        """Return once `read` may have more: the log changed since it last found nothing, or the
        stop condition's writer ended."""
        ...


def start_of(log: EventLog, after: Cursor | None, tail: int | None) -> tuple[int, bool]:
    """The first seq a stream delivers, and whether `after` could not be honoured (reset)."""
    if after is not None:
        if after.epoch == log.epoch and after.seq <= log.lines:
            return after.seq + 1, False
        return 1, True
    if tail is not None:
        return max(1, log.lines - tail + 1), False
    return 1, False


class LogReader:
    """A `Reader` over one session's log."""

    __slots__ = ("_buf", "_chunk", "_idle_version", "_log", "_offset", "_pos", "_stopped", "_until", "epoch", "seq")

    def __init__(self, log: EventLog, *, until: StopCondition | None = None, chunk_bytes: int = CHUNK_BYTES) -> None:
        self._log = log
        self._until = until
        self._stopped = False
        self._chunk = chunk_bytes
        self.epoch = log.epoch
        self.seq = 1  # next line to hand out
        self._offset = 0  # byte offset of line `seq`
        self._buf = b""  # log bytes from self._offset - self._pos
        self._pos = 0
        self._idle_version = -1

    @property
    def head(self) -> str | None:
        return format_cursor(self._log.epoch, self._log.lines) if self._log.lines else None

    @property
    def cursor(self) -> str | None:
        return format_cursor(self.epoch, self.seq - 1) if self.seq > 1 else None

    @property
    def stopped(self) -> bool:
        return self._stopped

    @property
    def open_ended(self) -> bool:
        """No stop condition: the reader follows the log for as long as its client stays, as a
        member of a session's hub must (the hub reads on for everyone and knows no stop condition)."""
        return self._until is None

    @property
    def log(self) -> EventLog:
        return self._log

    def mark(self) -> Mark:
        return Mark(self.epoch, self.seq, self._offset)

    def place(self, mark: Mark) -> None:
        """Stand at `mark` (taken from a reader of the same log); a changed epoch shows as a reset."""
        self.epoch, self.seq, self._offset, self._buf, self._pos = mark.epoch, mark.seq, mark.offset, b"", 0

    def clone(self) -> LogReader:
        """A reader of the same log standing where this one stands, holding no chunk."""
        other = LogReader(self._log, until=self._until, chunk_bytes=self._chunk)
        other.place(self.mark())
        return other

    async def seek(self, after: Cursor | None = None, tail: int | None = None) -> bool:
        """Position before the first line to deliver; True if `after` could not be honoured."""
        log = self._log
        self.epoch = log.epoch
        start, reset = start_of(log, after, tail)
        self._offset = await log.offset_of(start)
        self.seq, self._buf, self._pos = start, b"", 0
        return reset

    async def read(self, budget: int) -> list[Item]:
        log = self._log
        items: list[Item] = []
        used = 0
        while used < budget and not self._stopped:
            if items and used + BATCH_OVERHEAD > budget:
                break  # no room left for even a control line
            if log.epoch != self.epoch:
                self.epoch, self.seq, self._offset, self._buf, self._pos = log.epoch, 1, 0, b"", 0
                items.append(Reset(self.epoch))
                used += BATCH_OVERHEAD
                continue
            if self.seq > log.lines:
                self._idle_version = log.version
                if self._until is not None and self._until.done.is_set():
                    self._stopped = True  # caught up, and the stopping line will never come
                break
            bad = log.next_bad(self.seq)
            if bad is not None and bad.seq == self.seq:
                items.append(Skipped(bad.seq, bad.reason, bad.length))
                used += BATCH_OVERHEAD
                self._advance(bad.length + 1, 1)
                continue
            stop = bad.offset if bad is not None else log.end
            room = budget - used - BATCH_OVERHEAD
            if not await self._fill(stop, room):
                continue  # the log changed under the read (new epoch): start over above
            cut = cut_batch(self._buf, self._pos, room) if room > 0 else -1
            if cut < 0:
                if items:
                    break  # the next line gets a frame of its own
                cut = self._buf.index(b"\n", self._pos)
            data = self._buf[self._pos : cut]
            if self._until is not None and (stop := self._until.stop_offset(data)) >= 0:
                cut, data, self._stopped = self._pos + stop, data[:stop], True
            count = data.count(b"\n") + 1
            items.append(Batch(self.seq, self.seq + count - 1, data))
            used += len(data) + BATCH_OVERHEAD
            self._advance(cut + 1 - self._pos, count)
        return items

    def read_held(self, budget: int) -> list[Item] | None:
        """`read`'s answer when it is one batch of whole lines that the log holds in memory, as at
        the live edge it nearly always is: no I/O, no await. [] when nothing is new; None when the
        answer takes `read` (a read from disk, a reset, an undeliverable line, a stop condition,
        more than `budget`)."""
        log = self._log
        if self._until is not None or log.epoch != self.epoch or self._buf:
            return None
        if self.seq > log.lines:
            self._idle_version = log.version
            return []
        size = log.end - self._offset
        if log.next_bad(self.seq) is not None or size + BATCH_OVERHEAD > budget:
            return None
        parts: list[bytes] = []
        got = 0
        while got < size:  # the log holds its appends one piece each
            part = log.held(self._offset + got, size - got)
            if not part:
                return None
            parts.append(part)
            got += len(part)
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        count = data.count(b"\n")
        first = self.seq
        self._advance(size, count)
        return [Batch(first, first + count - 1, data[:-1])]

    def moved(self) -> bool:
        """The log changed since this reader last found nothing new."""
        return self._log.version != self._idle_version

    async def wait(self) -> None:
        if self._until is None:
            await self._log.wait_change(self._idle_version)
            return
        done = self._until.done
        async with anyio.create_task_group() as tg:
            async def until_done() -> None:
                await done.wait()
                tg.cancel_scope.cancel()

            tg.start_soon(until_done)
            await self._log.wait_change(self._idle_version)
            tg.cancel_scope.cancel()

    def _advance(self, nbytes: int, nlines: int) -> None:
        self._offset += nbytes
        self.seq += nlines
        if self._pos + nbytes < len(self._buf):
            self._pos += nbytes
        else:
            self._buf, self._pos = b"", 0  # consumed: a reader that idles at the end holds no chunk

    async def _fill(self, stop: int, want: int) -> bool:
        """Buffer at least one whole line, and `want` bytes when the log has them (below `stop`,
        a line boundary), so that one cut makes a full frame even across a chunk boundary."""
        epoch = self.epoch
        while True:
            remaining = len(self._buf) - self._pos
            have = self._offset + remaining
            if (remaining >= want or have >= stop) and self._buf.find(b"\n", self._pos) != -1:
                return True
            more = await self._log.read(have, min(self._chunk, stop - have))
            if not more and self._log.epoch == epoch:
                await self._log.poll()  # the file is shorter than the log's known end: cut under us
            if self._log.epoch != epoch:
                return False
            if not more:
                raise StoreError(f"log ended inside line {self.seq} at byte {have}")
            self._buf = self._buf[self._pos :] + more
            self._pos = 0
