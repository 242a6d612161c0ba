"""What a replica knows of one epoch's messages: where they are, and the payloads it keeps (pure)."""

from __future__ import annotations

import bisect
from collections import OrderedDict

from gateway.store.nats.layout import Placed

CACHE_BYTES = 4 * 1024 * 1024
"""Payloads a log keeps (most recently used): followers at the live edge, and readers close
behind each other, share one direct get per message."""


class Known:
    """Messages seen so far, by offset, with disjoint byte ranges: a compacted message replaces the
    originals it covers (both hold the same bytes), so any of them serves a read."""

    def __init__(self) -> None:
        self._placed: list[Placed] = []
        self._offsets: list[int] = []
        self._cache: OrderedDict[int, bytes] = OrderedDict()
        self._cache_bytes = 0

    def clear(self) -> None:
        self._placed, self._offsets = [], []
        self._cache.clear()
        self._cache_bytes = 0

    def holding(self, target: int, by_seq: bool) -> Placed | None:
        """The known message holding byte (or line) `target`, if any."""
        if by_seq:
            i = bisect.bisect_right(self._placed, target, key=lambda p: p.first) - 1
            ok = i >= 0 and target <= self._placed[i].last
        else:
            i = bisect.bisect_right(self._offsets, target) - 1
            ok = i >= 0 and target < self._placed[i].end
        return self._placed[i] if ok else None

    def ending_at(self, offset: int) -> Placed | None:
        """The known message whose bytes end at `offset` (a reader going on from it)."""
        i = bisect.bisect_right(self._offsets, offset) - 1
        return self._placed[i] if i >= 0 and self._placed[i].end == offset else None

    def bounds(self, target: int, by_seq: bool, base: int, last: int) -> tuple[int, int]:
        """Stream sequences of the session's own subject between which the message holding `target`
        must lie (from the known neighbours there; compacted ones live on another subject)."""
        if by_seq:
            i = bisect.bisect_right(self._placed, target, key=lambda p: p.first)
        else:
            i = bisect.bisect_right(self._offsets, target)
        before = self._placed[i - 1] if i > 0 else None
        after = self._placed[i] if i < len(self._placed) else None
        lo = before.sseq + 1 if before is not None and not before.compacted else base + 1
        hi = after.sseq - 1 if after is not None and not after.compacted else last
        return lo, hi

    def remember(self, msg: Placed) -> None:
        """Keep `msg` unless it only partly covers known messages or adds nothing."""
        if msg.marker:
            return
        lo = bisect.bisect_right(self._offsets, msg.offset)
        if lo > 0 and self._placed[lo - 1].end > msg.offset:
            lo -= 1
        hi = bisect.bisect_left(self._offsets, msg.end, lo=lo)
        known = self._placed[lo:hi]
        if any(p.offset < msg.offset or p.end > msg.end for p in known):
            return
        if len(known) == 1 and known[0].size == msg.size and known[0].compacted >= msg.compacted:
            return  # the same range, and no better
        self._placed[lo:hi] = [msg]
        self._offsets[lo:hi] = [msg.offset]

    def forget(self, msg: Placed) -> None:
        """Drop `msg` (its payload is gone: compacted, or purged by a DELETE)."""
        i = bisect.bisect_left(self._offsets, msg.offset)
        if i < len(self._placed) and self._placed[i] is msg:
            del self._placed[i], self._offsets[i]

    def payload(self, sseq: int) -> bytes | None:
        data = self._cache.get(sseq)
        if data is not None:
            self._cache.move_to_end(sseq)
        return data

    def keep(self, sseq: int, data: bytes) -> None:
        if sseq in self._cache or len(data) > CACHE_BYTES // 4:
            return
        self._cache[sseq] = data
        self._cache_bytes += len(data)
        while self._cache_bytes > CACHE_BYTES:
            self._cache_bytes -= len(self._cache.popitem(last=False)[1])

    def join(self, first: bytes, offset: int, size: int) -> bytes:
        """`first` (the start of a read at `offset`) and the known payloads right after it in memory,
        up to `size` bytes: consecutive small messages make one read."""
        parts, have = [first], len(first)
        i = bisect.bisect_right(self._offsets, offset)
        while have < size and i < len(self._placed) and self._placed[i].offset == offset + have:
            more = self._cache.get(self._placed[i].sseq)
            if more is None:
                break
            parts.append(more[: size - have])
            have += len(parts[-1])
            i += 1
        return parts[0] if len(parts) == 1 else b"".join(parts)
