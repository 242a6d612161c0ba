"""The sparse seq -> offset index and the log's small persistent header.

File layout (`agui-events.idx` beside the log), little-endian:

    header (64 bytes): magic "AGIX", version u32, log inode u64, epoch (16 bytes, ASCII, padded),
                       end u64, lines u64, pending_start u64, pending_end u64
    records (16 bytes each): offset u64, flags u64

Record k (0-based) is the byte offset of line seq = (k + 1) * INDEX_EVERY + 1; flag bit 0 says the
INDEX_EVERY lines before it hold at least one undeliverable line. `end`/`lines` record how far the
log is known to be classified, `pending_*` the byte range of an append in flight, recorded before
its bytes are written and cleared once it is published, so a crash in the middle of a write can be
rolled back. Nothing here is trusted blindly: `FileLog` checks every claim against the log itself
(size, inode, a newline before each offset) and rebuilds what does not hold.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

from gateway.store.fds import open_nofollow

_HEADER = struct.Struct("<4sIQ16sQQQQ")
_RECORD = struct.Struct("<QQ")
_MAGIC = b"AGIX"
_VERSION = 1
HEADER_SIZE = _HEADER.size
DIRTY = 1


@dataclass
class Header:
    inode: int = 0
    epoch: str = ""
    end: int = 0
    lines: int = 0
    pending_start: int = 0
    pending_end: int = 0

    def pack(self) -> bytes:
        return _HEADER.pack(
            _MAGIC, _VERSION, self.inode, self.epoch.encode("ascii"), self.end, self.lines,
            self.pending_start, self.pending_end,
        )


class IndexFile:
    """Owns the index file descriptor; writes are small pwrites, never fsynced (it is a cache)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd = open_nofollow(Path(path), os.O_RDWR | os.O_CREAT)

    def load(self) -> tuple[Header | None, list[tuple[int, int]]]:
        """The header and records as stored, or (None, []) when the file is new or unreadable."""
        raw = os.pread(self._fd, HEADER_SIZE, 0)
        if len(raw) < HEADER_SIZE:
            return None, []
        magic, version, inode, epoch, end, lines, p_start, p_end = _HEADER.unpack(raw)
        if magic != _MAGIC or version != _VERSION:
            return None, []
        header = Header(inode, epoch.rstrip(b"\0").decode("ascii", "replace"), end, lines, p_start, p_end)
        size = os.fstat(self._fd).st_size
        count = (size - HEADER_SIZE) // _RECORD.size  # a torn last record is ignored
        body = os.pread(self._fd, count * _RECORD.size, HEADER_SIZE)
        records = [_RECORD.unpack_from(body, i * _RECORD.size) for i in range(count)]
        return header, records

    def write_header(self, header: Header) -> None:
        os.pwrite(self._fd, header.pack(), 0)

    def reset(self, header: Header) -> None:
        os.ftruncate(self._fd, 0)
        self.write_header(header)

    def write_record(self, k: int, offset: int, flags: int) -> None:
        os.pwrite(self._fd, _RECORD.pack(offset, flags), HEADER_SIZE + k * _RECORD.size)

    def truncate_records(self, count: int) -> None:
        os.ftruncate(self._fd, HEADER_SIZE + count * _RECORD.size)

    def close(self) -> None:
        os.close(self._fd)
