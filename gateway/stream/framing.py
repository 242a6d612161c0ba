"""Wire encodings of reader items for the three transports (pure).

The reader hands out `Batch`es: runs of consecutive stored lines, as the bytes of the log with
their newlines. Encoders splice those bytes into the wire format; no event is ever parsed or
re-encoded, which is what keeps replay close to the transport's own speed (PROTOCOL §4).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Protocol

import orjson

try:
    from websockets.speedups import apply_mask
except ImportError:  # websockets built without its C extension
    from websockets.utils import apply_mask

from gateway.store.cursor import format_cursor

BATCH_OVERHEAD = 96
"""Upper bound of the bytes a batch line adds around its events (header, brackets, cursor)."""


@dataclass(frozen=True, slots=True)
class Batch:
    first: int
    last: int
    data: bytes  # the stored lines first..last joined by b"\n", without a trailing newline


@dataclass(frozen=True, slots=True)
class Compact:
    """Events of the compact view covering raw seqs `first..last` (log bytes `start..end`).

    `seqs` holds the seq of each event, comma-separated (they skip: each is the last raw event
    the compact one covers); `data` the events joined by newlines.
    """

    first: int
    last: int
    start: int
    end: int
    seqs: bytes
    data: bytes


@dataclass(frozen=True, slots=True)
class Skipped:
    seq: int
    reason: str
    nbytes: int


@dataclass(frozen=True, slots=True)
class Reset:
    epoch: str


Item = Batch | Compact | Skipped | Reset


def count_items(items: list[Item]) -> tuple[int, int]:
    """(events, skipped lines) in a frame's items."""
    events = skipped = 0
    for item in items:
        if isinstance(item, Batch):
            events += item.last - item.first + 1
        elif isinstance(item, Compact):
            events += item.seqs.count(b",") + 1
        elif isinstance(item, Skipped):
            skipped += 1
    return events, skipped


def websocket_text_frame(payload: bytes) -> bytes:
    """A whole unmasked, uncompressed WebSocket text frame (RFC 6455 §5.2), as a server sends it:
    the same bytes for every client without extensions."""
    n = len(payload)
    if n < 126:
        return struct.pack("!BB", 0x81, n) + payload
    if n < 65536:
        return struct.pack("!BBH", 0x81, 126, n) + payload
    return struct.pack("!BBQ", 0x81, 127, n) + payload


TEXT_FRAME, CONTROL_FRAME, OTHER_FRAME = 0, 1, 2
"""Kinds of `client_frame`."""


def client_frame(buf: bytes, pos: int, max_text: int) -> tuple[int, int, bytes] | None:
    """The client frame that starts at `buf[pos]` (RFC 6455 §5.2), or None while it is incomplete.

    Returns (kind, end, payload). TEXT_FRAME is a whole text message in one masked frame with no
    RSV bit, of at most `max_text` bytes: `payload` is its unmasked text, still unchecked UTF-8.
    CONTROL_FRAME is a whole masked ping, pong or close of at most 125 bytes: `buf[pos:end]` is
    for a full WebSocket parser. OTHER_FRAME is anything else (a fragment, binary, an unmasked
    or oversized frame, an RSV bit, a reserved opcode), told from the header alone, with `end`
    = `pos`: the full parser takes over from there, so a big frame is never held here.
    """
    if len(buf) - pos < 2:
        return None
    head1, head2 = buf[pos], buf[pos + 1]
    opcode, length = head1 & 0x0F, head2 & 0x7F
    control = opcode in (0x8, 0x9, 0xA)
    if (head1 & 0xF0) != 0x80 or not head2 & 0x80 or not (opcode == 0x1 or control) or (control and length > 125):
        return OTHER_FRAME, pos, b""
    start = pos + 2
    if length == 126:
        if len(buf) - pos < 4:
            return None
        (length,) = struct.unpack_from("!H", buf, start)
        start += 2
    elif length == 127:
        if len(buf) - pos < 10:
            return None
        (length,) = struct.unpack_from("!Q", buf, start)
        start += 8
    if length > max_text:
        return OTHER_FRAME, pos, b""
    end = start + 4 + length
    if len(buf) < end:
        return None
    if control:
        return CONTROL_FRAME, end, b""
    return TEXT_FRAME, end, apply_mask(buf[start + 4 : end], buf[start : start + 4])


def http_chunk(data: bytes) -> bytes:
    """`data` (not empty) as one chunk of a chunked HTTP/1.1 body, as h11 writes it: the same bytes
    for every SSE or NDJSON follower."""
    return b"%x\r\n%s\r\n" % (len(data), data)


def cut_batch(buf: bytes, start: int, room: int) -> int:
    """End (exclusive, at a newline) of the longest run of whole lines in buf[start:start+room].

    Returns -1 when even the first line does not fit, or has no newline in the buffer yet.
    """
    return buf.rfind(b"\n", start, start + room)


def _control(name: str, **fields: object) -> bytes:
    return orjson.dumps({"control": name, **fields})


class Encoder(Protocol):
    """How one transport writes items and controls; None means the transport has no such line."""

    def items(self, epoch: str, items: list[Item]) -> bytes:
        """The items as wire bytes; `epoch` is the one the first item is in (a `Reset` item
        switches to its epoch for the items after it)."""
        ...
    def live(self, cursor: str | None) -> bytes | None: ...
    def heartbeat(self, ts_ms: int) -> bytes: ...


class WebSocketEncoder:
    """PROTOCOL §4: one text frame holds one or more lines (event batches and controls)."""

    @staticmethod
    def hello(session: str, epoch: str, reset: bool, head: str | None) -> bytes:
        return _control("hello", session=session, epoch=epoch, reset=reset, head=head)

    @staticmethod
    def items(epoch: str, items: list[Item]) -> bytes:
        out: list[bytes] = []
        for item in items:
            out.append(WebSocketEncoder._item(epoch, item))
            if isinstance(item, Reset):
                epoch = item.epoch
        return b"\n".join(out)

    @staticmethod
    def _item(epoch: str, item: Item) -> bytes:
        if isinstance(item, Batch):
            head = b'{"first":%d,"last":%d,"cursor":"%s-%d","events":[' % (
                item.first, item.last, epoch.encode(), item.last,
            )
            return head + item.data.replace(b"\n", b",") + b"]}"
        if isinstance(item, Compact):
            head = b'{"first":%d,"last":%d,"cursor":"%s-%d","events":[' % (
                item.first, item.last, epoch.encode(), item.last,
            )
            return head + item.data.replace(b"\n", b",") + b'],"seqs":[' + item.seqs + b"]}"
        if isinstance(item, Skipped):
            return _control("skipped", seq=item.seq, cursor=format_cursor(epoch, item.seq), reason=item.reason,
                            bytes=item.nbytes)
        return _control("reset", epoch=item.epoch)

    def live(self, cursor: str | None) -> bytes:
        return _control("live", cursor=cursor)

    def heartbeat(self, ts_ms: int) -> bytes:
        return _control("heartbeat", ts=ts_ms)


class SseEncoder:
    """PROTOCOL §5: `data:` carries only AG-UI events, `id:` the cursor, controls are comments."""

    RETRY = b"retry: 1000\n\n"

    def items(self, epoch: str, items: list[Item]) -> bytes:
        out: list[bytes] = []
        prefix = b"id: " + epoch.encode() + b"-"
        for item in items:
            if isinstance(item, Batch):
                # SSE ends a line at CR too. In a JSON line a raw CR can only be whitespace (strings
                # must escape it), so dropping every CR keeps the event and the SSE line whole.
                data = item.data.replace(b"\r", b"") if b"\r" in item.data else item.data
                for i, line in enumerate(data.split(b"\n")):
                    out.append(b"%s%d\ndata: %s\n\n" % (prefix, item.first + i, line))
            elif isinstance(item, Compact):
                data = item.data.replace(b"\r", b"") if b"\r" in item.data else item.data
                for seq, line in zip(item.seqs.split(b","), data.split(b"\n"), strict=True):
                    out.append(b"%s%s\ndata: %s\n\n" % (prefix, seq, line))
            elif isinstance(item, Skipped):
                out.append(b": skipped seq=%d reason=%s bytes=%d\n\n" % (item.seq, item.reason.encode(), item.nbytes))
            else:
                out.append(b": reset epoch=%s\n\n" % item.epoch.encode())
                epoch, prefix = item.epoch, b"id: " + item.epoch.encode() + b"-"
        return b"".join(out)

    def live(self, cursor: str | None) -> bytes:
        return b": live\n\n"

    def heartbeat(self, ts_ms: int) -> bytes:
        return b": heartbeat\n\n"


class NdjsonEncoder:
    """One JSON object per line: `{"seq", "cursor", "event"}`; controls carry no `event` key."""

    def items(self, epoch: str, items: list[Item]) -> bytes:
        out: list[bytes] = []
        ep = epoch.encode()
        for item in items:
            if isinstance(item, Batch):
                for i, line in enumerate(item.data.split(b"\n")):
                    seq = item.first + i
                    out.append(b'{"seq":%d,"cursor":"%s-%d","event":%s}\n' % (seq, ep, seq, line))
            elif isinstance(item, Compact):
                for cseq, line in zip(item.seqs.split(b","), item.data.split(b"\n"), strict=True):
                    out.append(b'{"seq":%s,"cursor":"%s-%s","event":%s}\n' % (cseq, ep, cseq, line))
            elif isinstance(item, Skipped):
                out.append(orjson.dumps({"seq": item.seq, "cursor": format_cursor(epoch, item.seq),
                                         "skipped": {"reason": item.reason, "bytes": item.nbytes}}) + b"\n")
            else:
                out.append(orjson.dumps({"reset": {"epoch": item.epoch}}) + b"\n")
                epoch, ep = item.epoch, item.epoch.encode()
        return b"".join(out)

    def live(self, cursor: str | None) -> bytes | None:
        return None

    def heartbeat(self, ts_ms: int) -> bytes:
        return orjson.dumps({"heartbeat": ts_ms}) + b"\n"
