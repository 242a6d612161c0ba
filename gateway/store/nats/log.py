"""One session's log in JetStream, seen as the byte space the stream reader expects.

The log of an epoch is the concatenation of its messages' payloads. A replica knows the log's
`end` and `lines` from the last message's headers (one direct get, or a change notice), and
finds the message holding a byte offset or a seq from what it has already seen, else by a binary
search over direct gets on the stream sequence (messages of a subject grow in stream sequence,
seq and offset alike): no scan, whatever the log's size.
"""

from __future__ import annotations

import bisect
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import anyio

from gateway.store.base import AppendResult, SessionReset, StoreError, TooLarge
from gateway.store.changes import Changes
from gateway.store.cursor import new_epoch
from gateway.store.lines import BadLine
from gateway.store.nats import layout
from gateway.store.nats.conn import Conflict, NatsConn, Stored
from gateway.store.nats.layout import Placed

log = logging.getLogger("gateway.store.nats")

CACHE_BYTES = 4 * 1024 * 1024
"""Payloads a log keeps (most recently used): followers at the live edge, and readers close
behind each other, share one direct get per message."""
READ_AHEAD = 256
READ_AHEAD_BYTES = 1024 * 1024
"""A replay reads on in batches of up to this many messages or bytes (one request for many small ones)."""
HEADROOM = 4096
"""Bytes of a message's size left to its headers."""


def _now_ms() -> int:
    return int(time.time() * 1000)


class NatsLog:
    """One session's log (an `EventLog`): appends with optimistic concurrency, reads by offset."""

    def __init__(self, conn: NatsConn, session: str, cache_dir: Path, *,
                 on_append: Callable[[int, float], None] | None = None) -> None:
        self._conn = conn
        self.session = session
        self.dir = cache_dir
        self._subject = layout.log_subject(conn.stream, session)
        self._on_append = on_append
        self.project = ""
        self.created_ms: int | None = None
        self._epoch = ""
        self._base = 0  # stream sequence of the epoch's marker
        self._last_sseq = 0  # the subject's last stream sequence, as last seen
        self._end = 0
        self._lines = 0
        self._changes = Changes()
        self._lock = anyio.Lock()  # this replica's appends and deletes, one at a time
        self._bad: list[BadLine] = []  # undeliverable lines of an epoch copied from a file log
        self._placed: list[Placed] = []  # messages of the epoch seen so far, by offset
        self._offsets: list[int] = []
        self._cache: OrderedDict[int, bytes] = OrderedDict()
        self._cache_bytes = 0
        self.last_append_ms: int | None = None

    # -- what readers see -------------------------------------------------------------------

    @property
    def epoch(self) -> str:
        return self._epoch

    @property
    def end(self) -> int:
        return self._end

    @property
    def lines(self) -> int:
        return self._lines

    @property
    def version(self) -> int:
        return self._changes.version

    @property
    def waiters(self) -> int:
        return self._changes.waiters

    @property
    def bad_lines(self) -> int:
        return len(self._bad)

    @property
    def exists(self) -> bool:
        return bool(self._epoch)

    def next_bad(self, seq: int) -> BadLine | None:
        """Lines the gateway appended were validated; only an epoch copied from a file log has bad ones."""
        i = bisect.bisect_left(self._bad, seq, key=lambda b: b.seq)
        return self._bad[i] if i < len(self._bad) else None

    async def wait_change(self, version: int) -> None:
        await self._changes.wait(version)

    async def read(self, offset: int, size: int) -> bytes:
        size = min(size, self._end - offset)
        if size <= 0:
            return b""
        epoch = self._epoch
        found = await self._find(offset, by_seq=False)
        if found is None or self._epoch != epoch:
            return b""
        msg, data = found
        start = offset - msg.offset
        parts = [data[start : start + size]]
        have = len(parts[0])
        i = bisect.bisect_right(self._offsets, offset)  # the messages right after, while in memory
        while have < size and i < len(self._placed) and self._placed[i].offset == offset + have:
            more = self._cache.get(self._placed[i].sseq)
            if more is None:
                break
            parts.append(more[: size - have])
            have += len(parts[-1])
            i += 1
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def offset_of(self, seq: int) -> int:
        if not 1 <= seq <= self._lines + 1:
            raise ValueError(f"seq {seq} outside 1..{self._lines + 1}")
        if seq == self._lines + 1:
            return self._end
        found = await self._find(seq, by_seq=True)
        if found is None:
            raise StoreError("log changed while seeking")
        msg, data = found
        pos = 0
        for _ in range(seq - msg.first):
            pos = data.index(b"\n", pos) + 1
        return msg.offset + pos

    # -- finding messages -------------------------------------------------------------------

    async def _find(self, target: int, *, by_seq: bool) -> tuple[Placed, bytes] | None:
        """The message holding byte `target` (or line `target`) and its payload; None if the epoch
        ended under the search (it was reset: the caller sees the new epoch)."""
        epoch = self._epoch
        i = self._index_of(target, by_seq)
        if i is not None:
            msg = self._placed[i]
            data = await self._payload(msg)
            return (msg, data) if data is not None and self._epoch == epoch else None
        lo, hi = self._bounds(target, by_seq)
        j = bisect.bisect_right(self._offsets, target) - 1
        if not by_seq and j >= 0 and self._placed[j].end == target:
            await self._read_ahead(lo)  # reading on from the last message seen: take the next ones at once
            if self._epoch != epoch:
                return None
            i = self._index_of(target, by_seq)
            if i is not None:
                msg = self._placed[i]
                data = self._cache.get(msg.sseq)
                if data is not None:
                    return msg, data
        while lo <= hi:
            mid = (lo + hi) // 2
            got = await self._conn.get(seq=mid, next_by=self._subject)
            if self._epoch != epoch:
                return None
            probe = self._stored(got)
            if got is None or probe is None or probe.sseq > hi:
                hi = mid - 1
                continue
            if probe.epoch != epoch:
                await self.refresh()
                return None
            self._remember(probe)
            self._cache_payload(probe.sseq, got.data)
            low, high = (probe.first, probe.last + 1) if by_seq else (probe.offset, probe.end)
            if target < low:
                hi = mid - 1
            elif target >= high:
                lo = probe.sseq + 1
            else:
                return probe, got.data
        await self.refresh()  # not where the headers said: the log must have moved on
        return None

    async def _read_ahead(self, sseq: int) -> None:
        """Messages from stream sequence `sseq` on, in one batched direct get, into the index and cache."""
        for got in await self._conn.get_batch(self._subject, sseq, batch=READ_AHEAD, max_bytes=READ_AHEAD_BYTES):
            msg = self._stored(got)
            if msg is None or msg.epoch != self._epoch:
                break
            self._remember(msg)
            self._cache_payload(msg.sseq, got.data)

    def _index_of(self, target: int, by_seq: bool) -> int | None:
        """Position in `_placed` of a known message holding `target`, if any."""
        if by_seq:
            i = bisect.bisect_right(self._placed, target, key=lambda p: p.first) - 1
            ok = i >= 0 and target <= self._placed[i].last
        else:
            i = bisect.bisect_right(self._offsets, target) - 1
            ok = i >= 0 and target < self._placed[i].end
        return i if ok else None

    def _bounds(self, target: int, by_seq: bool) -> tuple[int, int]:
        """Stream sequences between which the message holding `target` must lie."""
        if by_seq:
            i = bisect.bisect_right(self._placed, target, key=lambda p: p.first)
        else:
            i = bisect.bisect_right(self._offsets, target)
        lo = self._placed[i - 1].sseq + 1 if i > 0 else self._base + 1
        hi = self._placed[i].sseq - 1 if i < len(self._placed) else self._last_sseq
        return lo, hi

    def _stored(self, got: Stored | None) -> Placed | None:
        if got is None:
            return None
        return layout.placed(got.sseq, got.headers, len(got.data))

    def _remember(self, msg: Placed) -> None:
        if msg.marker or msg.epoch != self._epoch:
            return
        i = bisect.bisect_left(self._offsets, msg.offset)
        if i < len(self._offsets) and self._offsets[i] == msg.offset:
            return
        self._offsets.insert(i, msg.offset)
        self._placed.insert(i, msg)

    async def _payload(self, msg: Placed) -> bytes | None:
        data = self._cache.get(msg.sseq)
        if data is not None:
            self._cache.move_to_end(msg.sseq)
            return data
        got = await self._conn.get(seq=msg.sseq)
        if got is None or got.headers.get(layout.EPOCH) != msg.epoch:
            await self.refresh()  # purged by a DELETE meanwhile
            return None
        self._cache_payload(msg.sseq, got.data)
        return got.data

    def _cache_payload(self, sseq: int, data: bytes) -> None:
        if sseq in self._cache or len(data) > CACHE_BYTES // 4:
            return
        self._cache[sseq] = data
        self._cache_bytes += len(data)
        while self._cache_bytes > CACHE_BYTES:
            self._cache_bytes -= len(self._cache.popitem(last=False)[1])

    # -- keeping up with the stream ---------------------------------------------------------

    async def refresh(self) -> None:
        """Take in the subject's last message: growth from any replica, or a new epoch."""
        got = await self._conn.get(last_by=self._subject)
        msg = self._stored(got)
        if got is None or msg is None:
            return
        bad: list[BadLine] = []
        if msg.bad and msg.epoch != self._epoch:  # a new epoch with bad lines: its marker lists them
            marker = got if msg.marker else await self._conn.get(seq=msg.base)
            bad = layout.bad_lines(marker.headers) if marker is not None else []
        self.apply(msg, bad)

    def apply(self, msg: Placed, bad: list[BadLine] | None = None) -> None:
        """Take in one stored message (from an ack, a direct get or a change notice); a message
        starting an epoch that has bad lines comes with them (`refresh` reads them)."""
        if msg.epoch != self._epoch:
            if msg.sseq < self._last_sseq:
                return  # a notice of an older epoch, overtaken
            self._start(msg)
            self._bad = bad or []
            return
        self._remember(msg)
        if msg.sseq > self._last_sseq:
            self._last_sseq = msg.sseq
            if msg.last > self._lines:
                self._end, self._lines = msg.end, msg.last
            self._changes.notify()

    def _start(self, msg: Placed) -> None:
        """A new epoch (or the first one seen): forget the old one; followers get `reset`."""
        if self._epoch:
            log.warning("new epoch", extra={"session": self.session, "old_epoch": self._epoch, "epoch": msg.epoch})
        self._epoch, self.project, self._base = msg.epoch, msg.project, msg.base
        self._last_sseq = msg.sseq
        self._placed, self._offsets = [], []
        self._cache.clear()
        self._cache_bytes = 0
        self._end, self._lines = (0, 0) if msg.marker else (msg.end, msg.last)
        self._remember(msg)
        self._changes.notify()

    async def poll(self) -> None:
        await self.refresh()

    # -- writing -----------------------------------------------------------------------------

    async def create(self, project: str) -> None:
        """Write the first epoch's marker, unless another replica created the session first."""
        async with self._lock:
            try:
                await self._publish_marker(project, expect=0)
            except Conflict:
                await self.refresh()

    async def _publish_marker(self, project: str, *, expect: int) -> Placed:
        epoch, created = new_epoch(), _now_ms()
        sseq = await self._conn.publish(self._subject, b"", layout.marker_headers(epoch, project, created, expect))
        msg = Placed(sseq, epoch, project, sseq, 0, 0, 0, 0)
        self.created_ms = created
        self.apply(msg)
        return msg

    async def append(self, lines: list[bytes]) -> AppendResult:
        """One message holding `lines`, stored after the subject's last message as this replica
        knows it; if another replica got there first, catch up and try again. Acknowledged by
        JetStream on return."""
        started = time.perf_counter()
        data = b"\n".join(lines) + b"\n"
        limit = self._conn.max_payload - HEADROOM
        if len(data) > limit:
            raise TooLarge(f"this append is {len(data)} bytes; NATS takes at most {limit} in one append "
                           "(raise the server's max_payload, or append in smaller batches)")
        async with self._lock:
            epoch = self._epoch
            while True:
                first, offset = self._lines + 1, self._end
                last = first + len(lines) - 1
                headers = layout.event_headers(epoch, self.project, self._base, first, last, offset, self._last_sseq)
                try:
                    sseq = await self._conn.publish(self._subject, data, headers)
                except Conflict:
                    await self.refresh()
                    if self._epoch != epoch:
                        raise SessionReset(
                            "the session's log was reset (deleted) while this append was being stored; "
                            "it is not in the new log: append again"
                        ) from None
                    continue
                break
        msg = Placed(sseq, epoch, self.project, self._base, first, last, offset, len(data))
        self._cache_payload(sseq, data)
        self.apply(msg)
        self.last_append_ms = _now_ms()
        if self._on_append is not None:
            self._on_append(len(lines), time.perf_counter() - started)
        return AppendResult(epoch, first, last)

    async def delete(self) -> str:
        """A new epoch's marker after whatever is last (a DELETE always wins), then the old
        epoch's messages are purged. Every replica's followers get `reset` from the notice."""
        async with self._lock:
            while True:
                try:
                    msg = await self._publish_marker(self.project, expect=self._last_sseq)
                    break
                except Conflict:
                    await self.refresh()
        await self._conn.purge_before(self._subject, msg.sseq)
        return msg.epoch

    def busy(self) -> bool:
        return bool(self.waiters) or self._lock.locked()
