"""Line classification (pure): which stored lines are deliverable events and which are skipped.

A log line is deliverable when it is a JSON object no larger than the event limit. The check
runs once per line when a region of the log is first indexed (lines the gateway appended itself
were validated on the way in), never on the replay path.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

import orjson

SkipReason = Literal["corrupt", "oversize"]

INDEX_EVERY = 1024
"""Lines between two points of the sparse seq -> offset index."""


@dataclass(frozen=True, slots=True)
class BadLine:
    """A line that is kept in the log but never delivered: it becomes a `skipped` control."""

    seq: int
    offset: int
    length: int  # bytes, without the trailing newline
    reason: SkipReason


@dataclass(frozen=True, slots=True)
class Scan:
    """What `scan_lines` found in a buffer of whole lines."""

    lines: int
    bad: list[BadLine]
    index_points: list[tuple[int, int]]  # (seq, offset) of lines where seq % INDEX_EVERY == 1


def no_constants(name: str) -> Any:
    """`parse_constant` for the standard library's decoder: NaN and Infinity are not JSON."""
    raise ValueError(f"{name} is not JSON")


def one_line(raw: bytes) -> bytes:
    """A JSON text as one stored line.

    JSON strings cannot hold a raw CR or LF, so these are whitespace between tokens. A CR must
    go too: it would end an SSE `data:` line early.
    """
    return raw.replace(b"\r", b"").replace(b"\n", b"")


def parse_object(raw: bytes) -> dict[str, Any] | None:
    """The JSON object in `raw`, or None if it is not one.

    orjson first (fast); the standard library decides what orjson refuses but JSON allows, such
    as an escaped lone surrogate, so no valid event is ever called corrupt.
    """
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        try:
            value = json.loads(raw, parse_constant=no_constants)
        except ValueError:
            return None
    return value if isinstance(value, dict) else None


def classify(line: bytes, max_bytes: int) -> SkipReason | None:
    """None for a deliverable event, else why the line is skipped."""
    if len(line) > max_bytes:
        return "oversize"
    if line.lstrip()[:1] != b"{" or parse_object(line) is None:
        return "corrupt"
    return None


def is_index_seq(seq: int) -> bool:
    return seq > 1 and (seq - 1) % INDEX_EVERY == 0


def scan_lines(buf: bytes, offset: int, first_seq: int, max_bytes: int) -> Scan:
    """Classify every line of `buf`, which holds whole `\\n`-terminated lines starting at `offset`."""
    assert not buf or buf.endswith(b"\n"), "scan_lines takes whole lines"
    bad: list[BadLine] = []
    points: list[tuple[int, int]] = []
    seq, pos = first_seq, 0
    end = len(buf)
    while pos < end:
        nl = buf.index(b"\n", pos)
        if is_index_seq(seq):
            points.append((seq, offset + pos))
        reason = classify(buf[pos:nl], max_bytes)
        if reason is not None:
            bad.append(BadLine(seq, offset + pos, nl - pos, reason))
        seq += 1
        pos = nl + 1
    return Scan(seq - first_seq, bad, points)


def index_points_of(lines: list[bytes], offset: int, first_seq: int) -> list[tuple[int, int]]:
    """Index points among `lines` about to be written at `offset` (each gets a newline).

    Only every INDEX_EVERY-th line is a point: the lengths between two are summed in C, so an
    append of millions of tiny events costs milliseconds on the event loop, not seconds.
    """
    points = []
    pos, done = offset, 0  # pos: where lines[done] starts
    i = (1 - first_seq) % INDEX_EVERY  # the first line whose seq is 1 modulo INDEX_EVERY
    if first_seq + i == 1:
        i += INDEX_EVERY  # seq 1 starts the log: it needs no point
    while i < len(lines):
        pos += sum(map(len, lines[done:i])) + (i - done)
        done = i
        points.append((first_seq + i, pos))
        i += INDEX_EVERY
    return points


def skip_lines(chunk: bytes, skip: int) -> tuple[int, int]:
    """How many bytes of `chunk` the first `skip` lines take, and how many of those lines are
    left: all of `chunk` is taken when it ends first."""
    pos = 0
    while skip:
        nl = chunk.find(b"\n", pos)
        if nl == -1:
            return len(chunk), skip
        pos = nl + 1
        skip -= 1
    return pos, 0
