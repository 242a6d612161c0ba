"""A stream's configuration and writer state (pure): one JSON line of its meta log.

The meta log is a log of the store like the data log beside it, so the state has the data's
durability on every store; each change appends a whole new state, the last line is the current one.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import orjson


@dataclass(frozen=True, slots=True)
class Fork:
    """Where a fork's inherited history comes from: `point` positions of the stream at `key`."""

    key: str
    path: str
    point: int
    offset: str  # the request's Stream-Fork-Offset (or the tail it defaulted to)
    sub: int


@dataclass(frozen=True, slots=True)
class Meta:
    content_type: str
    incarnation: int
    created_ms: int
    ttl: int | None = None
    expires_at: str | None = None
    expires_ms: int | None = None
    closed: bool = False
    closed_by: tuple[str, int, int] | None = None
    """The producer (id, epoch, seq) whose append closed the stream: its retry is a duplicate."""
    fork: Fork | None = None
    forks: int = 0
    """Forks that read this stream's history: a DELETE only hides it while there are any."""
    deleted: bool = False
    producers: dict[str, tuple[int, int]] = field(default_factory=dict)
    stream_seq: str | None = None

    def replace(self, **changes: Any) -> Meta:
        return dataclasses.replace(self, **changes)

    def line(self) -> bytes:
        return orjson.dumps(dataclasses.asdict(self))


def meta_of(line: bytes) -> Meta:
    raw = orjson.loads(line)
    fork = raw.pop("fork")
    closed_by = raw.pop("closed_by")
    producers = {k: (v[0], v[1]) for k, v in raw.pop("producers").items()}
    return Meta(**raw, fork=Fork(**fork) if fork else None,
                closed_by=(closed_by[0], closed_by[1], closed_by[2]) if closed_by else None, producers=producers)
