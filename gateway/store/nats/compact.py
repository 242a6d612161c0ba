"""Compaction: a session's settled messages moved into large ones, so that replay and resume stay
fast whatever the appends looked like, and no reader notices.

A log written one event per append is thousands of small messages; replaying it costs a message
each, and finding a cursor's message by binary search costs a direct get of whole messages. So the
messages of an epoch behind the live edge (all but the subject's last, which appends and refreshes
need) are copied, in order, into messages of about `CHUNK` bytes on the compacted subject, with the
same placement headers: a compacted message holds exactly the bytes, seqs and offsets of the
originals it replaces. Each one gets a payload-less index entry (layout.index_headers), published
with the index subject's last stream sequence as the compactor saw it: of several compactors
(replicas) at once, exactly one extends the index; the others drop their copy and stop. Only then
are the originals up to it purged. At every moment each byte of the log is in a message a reader
can find (an original, a compacted copy, or both: any message holding a byte holds the same byte),
so a reader mid-way keeps its exact position; readers find compacted messages through the index.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

from gateway.store.nats import layout
from gateway.store.nats.conn import Conflict, NatsConn, Stored
from gateway.store.nats.layout import Placed

log = logging.getLogger("gateway.store.nats")

CHUNK = 512 * 1024
"""A compacted message is closed once it holds this many bytes."""
SCAN = 512
SCAN_BYTES = 4 * 1024 * 1024
"""Originals are read in batched direct gets of up to this many messages or bytes."""
HEADROOM = 4096
AFTER = 1024 * 1024
IDLE = 64 * 1024, 2000
"""A replica that appended to a log compacts it once this many bytes lie between the compacted
part and the live edge, or at least IDLE[0] bytes after IDLE[1] ms without appends."""


def due(behind: int, idle_ms: int) -> bool:
    """Whether to compact, `behind` bytes lying uncompacted behind the live edge, `idle_ms` after the last append."""
    return behind >= AFTER or (behind >= IDLE[0] and idle_ms >= IDLE[1])


@dataclass(frozen=True, slots=True)
class Packed:
    """How far the epoch is compacted: seqs 1..lines, bytes 0..end; `sseq` is the index's last entry."""

    lines: int = 0
    end: int = 0
    sseq: int = 0
    created: str = ""  # the epoch marker's `Agui-Created`, which every index entry carries


@dataclass(frozen=True, slots=True)
class Subjects:
    edge: str  # the session's own subject: appends, markers
    packed: str
    index: str

    @classmethod
    def of(cls, stream: str, session: str) -> Subjects:
        return cls(layout.log_subject(stream, session), layout.compacted_subject(stream, session),
                   layout.index_subject(stream, session))


async def index_edge(conn: NatsConn, subjects: Subjects, base: int) -> Packed | None:
    """The index's last entry for the epoch whose marker is at `base`; None if a newer epoch wrote it
    (the caller's view is stale). An older epoch's entry (a compactor that outran a DELETE) counts
    as nothing compacted yet."""
    got = await conn.get(last_by=subjects.index)
    entry = layout.indexed(got.headers) if got is not None else None
    if got is None or entry is None:
        return Packed(0, 0, got.sseq if got is not None else 0)
    if entry.base > base:
        return None
    if entry.base < base:
        return Packed(0, 0, got.sseq)
    return Packed(entry.last, entry.end, got.sseq, got.headers.get(layout.CREATED, ""))


async def epoch_marker(conn: NatsConn, subjects: Subjects, base: int) -> Stored | None:
    """The epoch's marker or, once compaction purged it, the epoch's first index entry, which
    carries the marker's `Agui-Created`."""
    got = await conn.get(seq=base)
    if got is not None and got.headers.get(layout.MARKER):
        return got
    entry = await conn.get(seq=base, next_by=subjects.index)
    return entry if entry is not None and entry.headers.get(layout.BASE) == str(base) else None


async def compact(conn: NatsConn, subjects: Subjects, base: int, live: int) -> Packed | None:
    """Compact the epoch (marker at `base`) up to, not including, stream sequence `live`; the
    compacted boundary once done. None when another compactor extended the index first, or a newer
    epoch began: the caller reads the boundary again when it needs it."""
    packed = await index_edge(conn, subjects, base)
    if packed is None:
        return None
    if not packed.created:
        marker = await conn.get(seq=base)
        if marker is None or not marker.headers.get(layout.MARKER):
            return None  # a newer epoch purged it
        packed = replace(packed, created=marker.headers.get(layout.CREATED, ""))
    limit = min(2 * CHUNK, conn.max_payload - HEADROOM)
    chunk: list[tuple[Placed, bytes]] = []
    nbytes, expect, sseq = 0, packed.lines + 1, base
    while sseq < live:
        batch = await conn.get_batch(subjects.edge, sseq, batch=SCAN, max_bytes=SCAN_BYTES)
        sseq = batch[-1].sseq + 1 if batch else live
        for got in batch:
            msg = layout.placed(got.sseq, got.headers, len(got.data))
            if msg is None or msg.base != base or got.sseq >= live:
                sseq = live
                break
            if msg.marker or msg.last < expect:
                continue  # compacted already, not purged yet
            if msg.first != expect:
                return packed  # a hole: another compactor moved these meanwhile
            if chunk and (nbytes >= CHUNK or nbytes + msg.size > limit):
                if (done := await _flush(conn, subjects, packed, chunk)) is None:
                    return None
                packed, nbytes = done, 0
            chunk.append((msg, got.data))
            nbytes, expect = nbytes + msg.size, msg.last + 1
    return await _flush(conn, subjects, packed, chunk) if chunk else packed


async def _flush(conn: NatsConn, subjects: Subjects, packed: Packed,
                 chunk: list[tuple[Placed, bytes]]) -> Packed | None:
    """Store `chunk` as one compacted message, index it, purge its originals; empties `chunk`.
    None if another compactor indexed first (it carries on; this copy is dropped)."""
    first, last = chunk[0][0], chunk[-1][0]
    data = b"".join(part for _, part in chunk)
    chunk.clear()
    headers = layout.event_headers(first.epoch, first.project, first.base, first.first, last.last, first.offset, None)
    sseq = await conn.publish(subjects.packed, data, headers)
    msg = Placed(sseq, first.epoch, first.project, first.base, first.first, last.last, first.offset, len(data),
                 compacted=True)
    try:
        entry = await conn.publish(subjects.index, b"", {**layout.index_headers(msg, packed.sseq),
                                                         layout.CREATED: packed.created})
    except Conflict:
        await conn.delete_msg(sseq)
        log.info("compaction overtaken by another replica", extra={"subject": subjects.edge})
        return None
    await conn.purge_before(subjects.edge, last.sseq + 1)
    return Packed(msg.last, msg.end, entry, packed.created)
