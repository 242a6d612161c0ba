"""How session logs sit in JetStream (pure: no I/O).

One stream `<S>` holds every session on subject `<S>.e.<session>` (session names are DNS labels,
so they are valid subject tokens). Each message is one append (its lines joined, each ending in
"\\n"), and carries in headers everything a replica needs to place it without reading anything
else: the epoch, the owning project, its first and last seq, its byte offset in the epoch's log
(the concatenation of the payloads), and the stream sequence of the epoch's marker.

An epoch starts with a marker message (empty payload, `Agui-Marker`): creating a session writes
one, and DELETE writes a new one, then purges what lies before it. The last message of a subject
therefore always tells the current epoch, seq and byte length of the log.

An epoch copied from a file log (`agui-gateway migrate`) may hold lines the file store skips
(corrupt, oversize): they are stored as they were, and its marker lists them (`Agui-Bad`,
"seq:offset:length:reason" joined by ","), while each of its messages says how many there are
(`Agui-Bad-Lines`), so a replica that meets the epoch anywhere knows to read the list first.

Once stored, JetStream republishes every message's headers (not its payload) on
`<S>.n.<session>`: the change notice other replicas follow, naming only stored messages.

Compaction (compact.py) moves the settled messages of an epoch, all but the live edge, into large
messages on `<S>.e.<session>.c` (same headers, payloads joined, so offsets and seqs stay) and
indexes each one by a payload-less entry on `<S>.e.<session>.x` (its placement, and `Agui-Data`:
the compacted message's stream sequence); the entries chain seq ranges 1.. without gap or overlap.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, cast

from gateway.store.lines import BadLine, SkipReason

EPOCH = "Agui-Epoch"
PROJECT = "Agui-Project"
FIRST = "Agui-First"
LAST = "Agui-Last"
OFFSET = "Agui-Offset"
BASE = "Agui-Base"
MARKER = "Agui-Marker"
CREATED = "Agui-Created"
BAD = "Agui-Bad"
BAD_LINES = "Agui-Bad-Lines"
DATA = "Agui-Data"
SIZE = "Agui-Size"
EXPECTED_LAST_SUBJECT_SEQ = "Nats-Expected-Last-Subject-Sequence"
WRONG_LAST_SEQUENCE = 10071
"""JetStream's error code for a failed `Nats-Expected-Last-Subject-Sequence` check."""


def log_subject(stream: str, session: str) -> str:
    return f"{stream}.e.{session}"


def compacted_subject(stream: str, session: str) -> str:
    return f"{stream}.e.{session}.c"


def index_subject(stream: str, session: str) -> str:
    return f"{stream}.e.{session}.x"


def notice_subject(stream: str, session: str) -> str:
    return f"{stream}.n.{session}"


def stream_config(stream: str, replicas: int) -> dict[str, Any]:
    """The stream the gateway creates when it finds none (an existing one is used as it is)."""
    return {
        "name": stream,
        "subjects": [f"{stream}.e.>"],
        "storage": "file",
        "num_replicas": replicas,
        "retention": "limits",
        "discard": "old",
        "allow_direct": True,
        "republish": {"src": f"{stream}.e.>", "dest": f"{stream}.n.>", "headers_only": True},
    }


def kv_config(bucket: str, *, max_age_s: float, replicas: int) -> dict[str, Any]:
    """A key-value bucket as JetStream's KV layer lays it out (so `nats kv` tools can read it),
    replicated like the logs' stream: run slots and lists must outlive a NATS node too."""
    return {
        "name": f"KV_{bucket}",
        "subjects": [f"$KV.{bucket}.>"],
        "storage": "file",
        "max_msgs_per_subject": 1,
        "max_age": int(max_age_s * 1e9),
        "discard": "new",
        "allow_direct": True,
        "allow_rollup_hdrs": True,
        "deny_delete": True,
        "num_replicas": replicas,
    }


@dataclass(frozen=True, slots=True)
class Placed:
    """Where one stored message sits: in the stream, in the epoch's seqs and bytes."""

    sseq: int
    epoch: str
    project: str
    base: int  # stream sequence of the epoch's marker
    first: int  # 0 for a marker
    last: int  # seq of its last line; 0 for a marker
    offset: int
    size: int
    bad: int = 0  # undeliverable lines in the epoch (only in an epoch copied from a file log)
    compacted: bool = False  # on the compacted subject (else on the session's own)

    @property
    def marker(self) -> bool:
        return self.first == 0

    @property
    def end(self) -> int:
        return self.offset + self.size


def event_headers(epoch: str, project: str, base: int, first: int, last: int, offset: int,
                  expect: int | None) -> dict[str, str]:
    """`expect`: the subject's last stream sequence the publish requires (None: no condition)."""
    headers = {EPOCH: epoch, PROJECT: project, BASE: str(base), FIRST: str(first), LAST: str(last),
               OFFSET: str(offset)}
    if expect is not None:
        headers[EXPECTED_LAST_SUBJECT_SEQ] = str(expect)
    return headers


def index_headers(msg: Placed, expect: int) -> dict[str, str]:
    """The index entry of compacted message `msg`; `expect`: the index's last entry as the compactor saw it."""
    return {**event_headers(msg.epoch, msg.project, msg.base, msg.first, msg.last, msg.offset, expect),
            DATA: str(msg.sseq), SIZE: str(msg.size)}


def marker_headers(epoch: str, project: str, created_ms: int, expect: int) -> dict[str, str]:
    return {
        EPOCH: epoch, PROJECT: project, MARKER: "1", CREATED: str(created_ms),
        EXPECTED_LAST_SUBJECT_SEQ: str(expect),
    }


def placed(sseq: int, headers: Mapping[str, str], size: int) -> Placed | None:
    """The placement a stored message's headers give; None for a message the gateway did not write."""
    try:
        epoch, project = headers[EPOCH], headers[PROJECT]
        bad = int(headers.get(BAD_LINES, 0))
        if headers.get(MARKER):
            return Placed(sseq, epoch, project, sseq, 0, 0, 0, 0, bad)
        first, last = int(headers[FIRST]), int(headers[LAST])
        return Placed(sseq, epoch, project, int(headers[BASE]), first, last, int(headers[OFFSET]), size, bad)
    except (KeyError, ValueError):
        return None


def bad_header(bad: list[BadLine]) -> str:
    return ",".join(f"{b.seq}:{b.offset}:{b.length}:{b.reason}" for b in bad)


def bad_lines(headers: Mapping[str, str]) -> list[BadLine]:
    """The undeliverable lines an epoch's marker lists, by seq."""
    out = []
    for entry in filter(None, headers.get(BAD, "").split(",")):
        seq, offset, length, reason = entry.split(":")
        if reason not in ("corrupt", "oversize"):
            raise ValueError(f"unknown skip reason {reason!r}")
        out.append(BadLine(int(seq), int(offset), int(length), cast(SkipReason, reason)))
    return out


def indexed(headers: Mapping[str, str]) -> Placed | None:
    """The compacted message an index entry names (its `sseq` is the compacted message's)."""
    try:
        msg = placed(int(headers[DATA]), headers, int(headers[SIZE]))
    except (KeyError, ValueError):
        return None
    return None if msg is None or msg.marker else replace(msg, compacted=True)


def header_block(raw: bytes) -> dict[str, str]:
    """The headers of a stored message as the JetStream API returns them (a `NATS/1.0` block;
    a header given twice keeps its last value) (pure)."""
    pairs = (line.partition(":") for line in raw.decode(errors="replace").split("\r\n")[1:])
    return {name.strip(): value.strip() for name, sep, value in pairs if sep and name.strip()}
