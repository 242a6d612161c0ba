"""The Durable Streams protocol's values (pure): offsets, headers, cursors, ETags, producer rules.

An offset is `<incarnation>_<position>`, both 16 decimal digits: `position` counts the stream's
messages (JSON streams) or appends (byte streams) before it, `incarnation` is a number fixed for
the life of the stream (from the log's epoch), so an offset handed out before a DELETE is never
taken for a position of what replaced it. Sixteen digits on each side keep offsets sortable as
strings, and `0000000000000000_0000000000000000` is the start of every stream, as clients assume.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, NamedTuple

DIGITS = 16
START_TEXT = "0" * DIGITS + "_" + "0" * DIGITS
_OFFSET = re.compile(r"^(\d{1,16})_(\d{1,16})$")
_TTL = re.compile(r"^(0|[1-9][0-9]{0,11})$")
_COUNT = re.compile(r"^(0|[1-9][0-9]{0,15})$")
MAX_SAFE = 2**53 - 1
CURSOR_EPOCH_MS = 1728432000000  # 2024-10-09T00:00:00Z, the protocol's reference point for cursors
CURSOR_INTERVAL_MS = 20_000


class DsError(Exception):
    """A refusal with the protocol's status and, where it says so, headers."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


class Offset(NamedTuple):
    incarnation: int
    position: int


def format_offset(incarnation: int, position: int) -> str:
    return f"{incarnation:016d}_{position:016d}"


def parse_offset(text: str) -> Offset | Literal["-1", "now"]:
    """A client's offset: the sentinels `-1` (start) and `now` (tail), or one the server handed out."""
    if text == "-1":
        return "-1"
    if text == "now":
        return "now"
    match = _OFFSET.match(text)
    if match is None:
        raise DsError(400, f"malformed offset {text[:64]!r}")
    return Offset(int(match[1]), int(match[2]))


def incarnation_of(epoch: str) -> int:
    """The offset prefix of a log epoch: never 0, which stands for 'any stream's start'."""
    digest: int = int.from_bytes(hashlib.sha256(epoch.encode()).digest()[:8], "big")
    return digest % int("9" * DIGITS) + 1


def is_true(value: str | None) -> bool:
    """`Stream-Closed`: only `true` (any case) counts; other values are as if absent."""
    return value is not None and value.strip().lower() == "true"


def parse_ttl(text: str) -> int:
    if not _TTL.match(text):
        raise DsError(400, f"Stream-TTL must be a non-negative integer in seconds, got {text[:32]!r}")
    return int(text)


def parse_expires_at(text: str) -> int:
    """An RFC 3339 timestamp as Unix milliseconds."""
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise DsError(400, f"Stream-Expires-At is not an RFC 3339 timestamp: {text[:64]!r}") from None
    if when.tzinfo is None:
        raise DsError(400, f"Stream-Expires-At needs a time zone: {text[:64]!r}")
    return int(when.timestamp() * 1000)


def parse_count(name: str, text: str) -> int:
    """A non-negative decimal integer header (no sign, no leading zeros), at most 2^53-1."""
    if not _COUNT.match(text.strip()) or int(text) > MAX_SAFE:
        raise DsError(400, f"{name} must be a non-negative integer, got {text[:32]!r}")
    return int(text)


@dataclass(frozen=True, slots=True)
class Producer:
    id: str
    epoch: int
    seq: int


def parse_producer(pid: str | None, epoch: str | None, seq: str | None) -> Producer | None:
    """The idempotent producer headers: all three or none."""
    given = [v is not None for v in (pid, epoch, seq)]
    if not any(given):
        return None
    if not all(given) or not (pid or "").strip():
        raise DsError(400, "Producer-Id, Producer-Epoch and Producer-Seq go together, and the id is not empty")
    assert pid is not None and epoch is not None and seq is not None
    return Producer(pid, parse_count("Producer-Epoch", epoch), parse_count("Producer-Seq", seq))


Verdict = Literal["accept", "duplicate", "stale", "gap", "bad_epoch_start"]


def judge_producer(state: tuple[int, int] | None, p: Producer) -> Verdict:
    """What an append of producer `p` is, given its last accepted (epoch, seq) on the stream."""
    if state is None:
        return "accept" if p.seq == 0 else "gap"
    epoch, last = state
    if p.epoch < epoch:
        return "stale"
    if p.epoch > epoch:
        return "accept" if p.seq == 0 else "bad_epoch_start"
    if p.seq <= last:
        return "duplicate"
    return "accept" if p.seq == last + 1 else "gap"


def response_cursor(client: str | None, now_ms: int, jitter: int) -> str:
    """`Stream-Cursor`: the current 20 s interval, and always past the client's (jitter in intervals,
    at least 1), so a CDN never serves the same cached empty answer forever."""
    interval = (now_ms - CURSOR_EPOCH_MS) // CURSOR_INTERVAL_MS
    if client is not None and client.isdigit() and int(client) >= interval:
        return str(int(client) + max(1, jitter))
    return str(interval)


def etag(stream_id: str, start: str, end: str, closed: bool) -> str:
    """Varies with the range served and with closure, so a 304 never hides the end of a stream."""
    return f'"{stream_id}:{start}:{end}{":c" if closed else ""}"'


def media_type(content_type: str | None) -> str:
    """The media type a stream is compared by: lower case, without parameters."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def is_json(content_type: str) -> bool:
    return media_type(content_type) == "application/json"


def sse_base64(content_type: str) -> bool:
    """SSE carries text and JSON streams as they are, other types base64-encoded."""
    media = media_type(content_type)
    return not (media.startswith("text/") or media == "application/json")
