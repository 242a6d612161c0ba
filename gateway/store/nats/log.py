"""One session's log in JetStream, seen as the byte space the stream reader expects.

The log of an epoch is the concatenation of its messages' payloads. A replica knows the log's
`end` and `lines` from the last message's headers (one direct get, or a change notice), and
finds the message holding a byte offset or a seq from what it has already seen, else by a binary
search over direct gets on the stream sequence (messages of a subject grow in stream sequence,
seq and offset alike): no scan, whatever the log's size. Messages behind the live edge are moved
into large ones by compaction (compact.py); those are found through its index, whose entries are
headers only, so a binary search over it moves a few hundred bytes a probe.
"""

from __future__ import annotations

import bisect
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import anyio

from gateway.clock import now_ms
from gateway.store.base import AppendResult, DoneWrite, SessionLog, SessionReset, StoreError, TooLarge
from gateway.store.changes import Changes
from gateway.store.cursor import new_epoch
from gateway.store.lines import BadLine
from gateway.store.nats import layout
from gateway.store.nats.compact import Packed, Subjects, compact, due, index_edge
from gateway.store.nats.conn import Conflict, NatsConn
from gateway.store.nats.known import Known
from gateway.store.nats.layout import Placed

log = logging.getLogger("gateway.store.nats")

READ_AHEAD = 256
READ_AHEAD_BYTES = 1024 * 1024
"""A replay reads on in batches of up to this many messages or bytes (one request for many small ones)."""
HEADROOM = 4096
"""Bytes of a message's size left to its headers."""


@dataclass(slots=True, eq=False)
class _Waiting:  # an append waiting for its commit, compared by identity
    lines: int
    data: bytes
    result: AppendResult | Exception | None = None


class NatsLog:
    """One session's log (an `EventLog`): appends with optimistic concurrency, reads by offset."""

    def __init__(self, conn: NatsConn, session: str, cache_dir: Path, *,
                 on_append: Callable[[SessionLog, list[bytes], float], None] | None = None) -> None:
        self._conn = conn
        self.session = session
        self.dir = cache_dir
        self._subjects = Subjects.of(conn.stream, session)
        self._subject = self._subjects.edge
        self._on_append = on_append
        self.project = ""
        self.created_ms: int | None = None
        self._epoch = ""
        self._base = 0  # stream sequence of the epoch's marker
        self._last_sseq = 0  # the subject's last stream sequence, as last seen
        self._edge = 0  # byte offset of the subject's last message (the live edge)
        self._packed: Packed | None = None  # how far the epoch is compacted, once read
        self._end = 0
        self._lines = 0
        self.changes = Changes()
        self._lock = anyio.Lock()  # this replica's appends and deletes, one at a time
        self._bad: list[BadLine] = []  # undeliverable lines of an epoch copied from a file log
        self._waiting: deque[_Waiting] = deque()  # appends not stored yet, in arrival order
        self._known = Known()  # messages of the epoch seen so far, and payloads kept
        self.last_append_ms: int | None = None
        self._compacted_ms = 0

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
        return self.changes.version

    @property
    def waiters(self) -> int:
        return self.changes.waiters

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
        await self.changes.wait(version)

    def held(self, offset: int, size: int) -> bytes | None:
        return None  # payloads are looked up by stream sequence, in `read`

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
        return self._known.join(data[start : start + size], offset, size)

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
        for _ in range(3):
            found = await self._locate(target, by_seq)
            if self._epoch != epoch:
                return None
            if found is not None:
                return found
            self._packed = await index_edge(self._conn, self._subjects, self._base)  # compacted meanwhile?
            if self._packed is None:
                break
        await self.refresh()  # not where the headers said: the log must have moved on
        return None

    async def _locate(self, target: int, by_seq: bool) -> tuple[Placed, bytes] | None:
        known = self._known
        msg = known.holding(target, by_seq)
        if msg is not None:
            data = await self._payload(msg)
            if data is None:
                known.forget(msg)  # compacted (or purged by a DELETE): look again
                return None
            return msg, data
        before = None if by_seq else known.ending_at(target)
        if before is not None:
            await self._read_ahead(before)  # reading on from the last message seen: take the next ones at once
            msg = known.holding(target, by_seq)
            if msg is not None and (data := known.payload(msg.sseq)) is not None:
                return msg, data
        packed = self._packed = self._packed or await index_edge(self._conn, self._subjects, self._base)
        if packed is not None and target < (packed.lines + 1 if by_seq else packed.end):
            found = await self._bisect(self._subjects.index, self._base + 1, packed.sseq, target, by_seq)
            data = None if found is None else await self._payload(found[0])  # the compacted message's
            return None if found is None or data is None else (found[0], data)
        lo, hi = known.bounds(target, by_seq, self._base, self._last_sseq)
        found = await self._bisect(self._subject, lo, hi, target, by_seq)
        if found is not None:
            known.keep(found[0].sseq, found[1])
        return found

    async def _bisect(self, subject: str, lo: int, hi: int, target: int, by_seq: bool) -> tuple[Placed, bytes] | None:
        """Binary search over the stream sequences `lo..hi` of `subject` (the session's own, or the
        index: then the placement is the compacted message's) for the message holding `target`."""
        index = subject == self._subjects.index
        while lo <= hi:
            mid = (lo + hi) // 2
            got = await self._conn.get(seq=mid, next_by=subject)
            probe = None if got is None else layout.indexed(got.headers) if index else got.placed
            if got is None or probe is None or got.sseq > hi:
                hi = mid - 1
                continue
            if probe.base != self._base:
                if probe.base > self._base:
                    return None  # a newer epoch
                lo = got.sseq + 1  # an older epoch's leftover
                continue
            self._known.remember(probe)
            low, high = (probe.first, probe.last + 1) if by_seq else (probe.offset, probe.end)
            if target < low:
                hi = mid - 1
            elif target >= high:
                lo = got.sseq + 1
            else:
                return probe, got.data
        return None

    async def _read_ahead(self, after: Placed) -> None:
        """The messages after `after` on its subject, in one batched direct get, into the index and cache."""
        subject = self._subjects.packed if after.compacted else self._subject
        for got in await self._conn.get_batch(subject, after.sseq + 1, batch=READ_AHEAD, max_bytes=READ_AHEAD_BYTES):
            msg = got.placed
            if msg is None or msg.base > self._base:
                break
            if msg.base == self._base:
                msg = replace(msg, compacted=after.compacted)
                self._known.remember(msg)
                self._known.keep(msg.sseq, got.data)

    async def _payload(self, msg: Placed) -> bytes | None:
        data = self._known.payload(msg.sseq)
        if data is not None:
            return data
        got = await self._conn.get(seq=msg.sseq)
        if got is None or got.headers.get(layout.EPOCH) != msg.epoch or len(got.data) != msg.size:
            return None  # compacted, or purged by a DELETE, meanwhile
        self._known.keep(msg.sseq, got.data)
        return got.data

    # -- keeping up with the stream ---------------------------------------------------------

    async def refresh(self, *, leader: bool = False) -> None:
        """Take in the subject's last message: growth from any replica, or a new epoch. `leader`:
        as the stream's leader has it (every acknowledged append), not as any NATS replica may."""
        got = await self._conn.get(last_by=self._subject, leader=leader)
        msg = None if got is None else got.placed
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
        self._known.remember(msg)
        if msg.sseq > self._last_sseq and not msg.compacted:
            self._last_sseq, self._edge = msg.sseq, msg.offset
            if msg.last > self._lines:
                self._end, self._lines = msg.end, msg.last
            self.changes.notify()

    def _start(self, msg: Placed) -> None:
        """A new epoch (or the first one seen): forget the old one; followers get `reset`."""
        if self._epoch:
            log.warning("new epoch", extra={"session": self.session, "old_epoch": self._epoch, "epoch": msg.epoch})
        self._epoch, self.project, self._base = msg.epoch, msg.project, msg.base
        self._last_sseq, self._edge, self._packed = msg.sseq, msg.offset, None
        self._known.clear()
        self._end, self._lines = (0, 0) if msg.marker else (msg.end, msg.last)
        self._known.remember(msg)
        self.changes.notify()

    async def poll(self) -> None:
        """Before a request reads the log: it sees every append acknowledged, through any gateway."""
        await self.refresh(leader=True)

    # -- writing -----------------------------------------------------------------------------

    async def create(self, project: str) -> None:
        """Write the first epoch's marker, unless another replica created the session first."""
        async with self._lock:
            try:
                await self._publish_marker(project, expect=0)
            except Conflict:
                await self.refresh(leader=True)

    async def _publish_marker(self, project: str, *, expect: int) -> Placed:
        epoch, created = new_epoch(), now_ms()
        sseq = await self._conn.publish(self._subject, b"", layout.marker_headers(epoch, project, created, expect))
        msg = Placed(sseq, epoch, project, sseq, 0, 0, 0, 0)
        self.created_ms = created
        self.apply(msg)
        return msg

    async def append(self, lines: list[bytes]) -> AppendResult:
        """`lines` stored after the subject's last message as this replica knows it, acknowledged by
        JetStream on return. Appends arriving while one is being stored wait, and are then stored
        together as one message (a group commit: one round trip and one ack for all of them)."""
        started = time.perf_counter()
        data = b"\n".join(lines) + b"\n"
        limit = self._conn.max_payload - HEADROOM
        if len(data) > limit:
            raise TooLarge(f"this append is {len(data)} bytes; NATS takes at most {limit} in one append "
                           "(raise the server's max_payload, or append in smaller batches)")
        mine = _Waiting(len(lines), data)
        self._waiting.append(mine)
        try:
            async with self._lock:
                while mine.result is None:
                    with anyio.CancelScope(shield=True):  # others' appends ride on this publish
                        await self._commit(limit)
        finally:
            if mine.result is None and mine in self._waiting:
                self._waiting.remove(mine)  # cancelled while waiting its turn (not taken into a commit yet)
        if isinstance(mine.result, Exception):
            raise mine.result
        self.last_append_ms = now_ms()
        if self._on_append is not None:
            self._on_append(self, lines, time.perf_counter() - started)
        return mine.result

    async def write(self, lines: list[bytes]) -> DoneWrite:
        """All of `append`: JetStream's ack is what makes an append written and durable at once."""
        return DoneWrite(await self.append(lines))

    def write_now(self, lines: list[bytes]) -> None:
        return None  # an append waits for JetStream's ack

    async def _commit(self, limit: int) -> None:
        """Store the waiting appends, oldest first and up to `limit` bytes, as one message; if another
        replica appended first, catch up and try again. Sets each one's result."""
        batch = [self._waiting.popleft()]
        size = len(batch[0].data)
        while self._waiting and size + len(self._waiting[0].data) <= limit:
            batch.append(self._waiting.popleft())
            size += len(batch[-1].data)
        data = batch[0].data if len(batch) == 1 else b"".join(w.data for w in batch)
        count, epoch = sum(w.lines for w in batch), self._epoch
        try:
            while True:
                first, offset = self._lines + 1, self._end
                headers = layout.event_headers(epoch, self.project, self._base, first, first + count - 1, offset,
                                               self._last_sseq)
                try:
                    sseq = await self._conn.publish(self._subject, data, headers)
                    break
                except Conflict:
                    await self.refresh(leader=True)
                    if self._epoch != epoch:
                        raise SessionReset(
                            "the session's log was reset (deleted) while this append was being stored; "
                            "it is not in the new log: append again"
                        ) from None
        except Exception as exc:
            for w in batch:
                w.result = exc
            return
        self._known.keep(sseq, data)
        self.apply(Placed(sseq, epoch, self.project, self._base, first, first + count - 1, offset, len(data)))
        for w in batch:
            w.result = AppendResult(epoch, first, first + w.lines - 1)
            first += w.lines

    async def delete(self) -> str:
        """A new epoch's marker after whatever is last (a DELETE always wins), then the old
        epoch's messages are purged. Every replica's followers get `reset` from the notice."""
        async with self._lock:
            while True:
                try:
                    msg = await self._publish_marker(self.project, expect=self._last_sseq)
                    break
                except Conflict:
                    await self.refresh(leader=True)
        for subject in (self._subject, self._subjects.packed, self._subjects.index):
            await self._conn.purge_before(subject, msg.sseq)
        return msg.epoch

    def compaction_due(self, now_ms: int) -> bool:
        """Whether this replica, having appended to the log, should compact it now (never an epoch
        with bad lines: its marker lists them, and compaction purges the marker)."""
        if self.last_append_ms is None or not self._epoch or self._bad or now_ms - self._compacted_ms < 1000:
            return False
        return due(self._edge - (self._packed.end if self._packed else 0), now_ms - self.last_append_ms)

    async def compact(self) -> None:
        """Move the settled messages into compacted ones (compact.py): replay and resume stay fast."""
        self._compacted_ms = now_ms()  # tried at most once a second, even if it cannot go on
        await self.refresh()
        self._packed = await compact(self._conn, self._subjects, self._base, self._last_sseq)  # None: read it again

    def busy(self) -> bool:
        return bool(self.waiters) or self._lock.locked()
