"""The protocol's writes on a stream: create (and fork), append (producers, Stream-Seq, closure).

Each runs under the stream's lock with its state just read, so the checks and the append they
allow are one step for every writer of this process. Answers are `Outcome`s (status and
headers); the HTTP layer only sends them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from gateway.clock import now_ms
from gateway.ds.meta import Fork, Meta
from gateway.ds.protocol import (
    DsError,
    Offset,
    Producer,
    format_offset,
    judge_producer,
    media_type,
    parse_offset,
)
from gateway.ds.records import byte_records, json_messages, record_bytes, wrap_messages
from gateway.ds.streams import DurableStreams, Stream

Encoder = Callable[[bytes], list[bytes]]


@dataclass(frozen=True, slots=True)
class Outcome:
    status: int
    headers: dict[str, str] = field(default_factory=dict)


def offset_text(stream: Stream, position: int | None = None) -> str:
    return format_offset(stream.meta.incarnation, stream.tail if position is None else position)


def position_of(stream: Stream, offset: Offset | Literal["-1", "now"]) -> int:
    """The position a client's offset names on this stream."""
    if offset == "-1":
        return 0
    if offset == "now":
        return stream.tail
    assert isinstance(offset, Offset)
    if offset == (0, 0):
        return 0
    if offset.incarnation != stream.meta.incarnation:
        raise DsError(410, "the offset is from an earlier incarnation of this stream (deleted since): read from -1")
    if offset.position > stream.tail:
        raise DsError(400, f"offset {format_offset(*offset)} is past the stream's tail {offset_text(stream)}")
    return offset.position


def encoder(kind: str, max_line: int) -> Encoder:
    """How a body becomes log lines on a stream created through the protocol."""
    if kind == "json":
        return lambda body: wrap_messages(json_messages(body, allow_empty=False), max_line)
    return byte_records


def closed_headers(stream: Stream) -> dict[str, str]:
    return {"Stream-Next-Offset": offset_text(stream), "Stream-Closed": "true"}


@dataclass(frozen=True, slots=True)
class Append:
    body: bytes
    content_type: str | None
    producer: Producer | None
    stream_seq: str | None
    close: bool


async def append(ds: DurableStreams, project: str, stream: Stream, req: Append, encode: Encoder) -> Outcome:
    """POST on a stream (its lock held): the precedence of refusals is the protocol's."""
    meta, p = stream.meta, req.producer
    if meta.closed:
        if p is not None and meta.closed_by == (p.id, p.epoch, p.seq):
            return Outcome(204, {**closed_headers(stream), "Producer-Epoch": str(p.epoch), "Producer-Seq": str(p.seq)})
        if req.close and not req.body:
            return Outcome(204, closed_headers(stream))
        raise DsError(409, "the stream is closed", closed_headers(stream))
    if req.body and not req.content_type:
        raise DsError(400, "an append with a body needs a Content-Type")
    if req.body and media_type(req.content_type) != media_type(meta.content_type):
        raise DsError(409, f"content type {media_type(req.content_type)!r} is not the stream's "
                           f"{media_type(meta.content_type)!r}")
    if not req.body and not req.close:
        raise DsError(400, "an append needs a body (or Stream-Closed: true)")
    producers = meta.producers
    if p is not None:
        state = producers.get(p.id)
        verdict = judge_producer(state, p)
        if verdict == "stale":
            raise DsError(403, "stale producer epoch", {"Producer-Epoch": str(state[0] if state else 0)})
        if verdict == "bad_epoch_start":
            raise DsError(400, "a new producer epoch starts at Producer-Seq 0")
        if verdict == "gap":
            expected = state[1] + 1 if state else 0
            raise DsError(409, "producer sequence gap", {"Producer-Expected-Seq": str(expected),
                                                        "Producer-Received-Seq": str(p.seq)})
        if verdict == "duplicate":
            assert state is not None
            return Outcome(204, {"Stream-Next-Offset": offset_text(stream), "Producer-Epoch": str(p.epoch),
                                 "Producer-Seq": str(state[1])})
        producers = {**producers, p.id: (p.epoch, p.seq)}
    if req.stream_seq is not None and meta.stream_seq is not None and req.stream_seq <= meta.stream_seq:
        raise DsError(409, f"Stream-Seq {req.stream_seq[:64]!r} is not after {meta.stream_seq[:64]!r}")
    if req.close and stream.kind == "session":
        raise DsError(405, "an AG-UI session cannot be closed; it stays open for the next run")
    lines = encode(req.body) if req.body else []
    if lines:
        await stream.data.append(lines)
    changed = meta.replace(producers=producers, stream_seq=req.stream_seq or meta.stream_seq)
    if req.close:
        changed = changed.replace(closed=True, closed_by=(p.id, p.epoch, p.seq) if p else None)
    if changed != meta:
        await ds.save(project, stream, changed)
    ds.touch(stream)
    headers = {"Stream-Next-Offset": offset_text(stream)}
    if req.close:
        headers["Stream-Closed"] = "true"
    if p is not None:
        headers |= {"Producer-Epoch": str(p.epoch), "Producer-Seq": str(p.seq)}
    return Outcome(200 if p is not None and lines else 204, headers)


@dataclass(frozen=True, slots=True)
class Create:
    body: bytes
    content_type: str | None
    ttl: int | None
    expires_at: tuple[str, int] | None
    closed: bool
    fork_from: str | None = None
    fork_offset: str | None = None
    fork_sub: int = 0


def _config(meta: Meta) -> tuple[object, ...]:
    fork = (meta.fork.path, meta.fork.offset, meta.fork.sub) if meta.fork else None
    return media_type(meta.content_type), meta.ttl, meta.expires_ms, meta.closed, fork


async def _fork_start(ds: DurableStreams, project: str, req: Create) -> tuple[Stream, int, list[bytes]]:
    """The source, the positions the fork inherits, and the prefix it copies (part of one byte
    append, for a sub-offset inside it)."""
    assert req.fork_from is not None
    source = await ds.open(project, req.fork_from)
    if source is None:
        raise DsError(404, f"no stream {req.fork_from!r} to fork from")
    if source.meta.deleted:
        raise DsError(409, f"stream {req.fork_from!r} is deleted (its forks still read it)")
    try:
        anchor = position_of(source, parse_offset(req.fork_offset) if req.fork_offset else "now")
    except DsError as exc:
        raise DsError(400, exc.message) from None
    if req.fork_sub == 0:
        return source, anchor, []
    if source.kind != "bytes":
        if anchor + req.fork_sub > source.tail:
            raise DsError(400, f"Stream-Fork-Sub-Offset {req.fork_sub} is past the source's messages")
        return source, anchor + req.fork_sub, []
    parts = await ds.reader(source, anchor).read(1)  # one record: the append the sub-offset points into
    record = record_bytes(parts[0].split(b"\n", 1)[0]) if parts else b""
    if req.fork_sub > len(record):
        raise DsError(400, f"Stream-Fork-Sub-Offset {req.fork_sub} is past the next append ({len(record)} bytes)")
    if req.fork_sub == len(record):
        return source, anchor + 1, []
    return source, anchor, byte_records(record[: req.fork_sub])


async def create(ds: DurableStreams, project: str, path: str, req: Create) -> tuple[Outcome, Stream]:
    """PUT (the stream's lock held): 201 for a new stream, 200 for the same one again, else 409."""
    existing = await ds.open(project, path, expire=False)
    if existing is not None and not existing.meta.deleted and ds.expired(existing):
        await ds.remove(project, existing)
        existing = None
    if existing is not None and existing.meta.deleted:
        raise DsError(409, f"stream {path!r} is deleted; its forks still read it, so the path stays taken")
    fork, incarnation = None, 0
    prefix: list[bytes] = []
    content_type = req.content_type or "application/octet-stream"
    ttl, expires = req.ttl, req.expires_at
    if req.fork_from is not None:
        source, point, prefix = await _fork_start(ds, project, req)
        content_type = req.content_type or source.content_type
        if media_type(content_type) != media_type(source.content_type):
            raise DsError(409, "a fork has its source's content type")
        if ttl is None and expires is None:
            ttl = source.meta.ttl
            if source.meta.expires_at is not None and source.meta.expires_ms is not None:
                expires = (source.meta.expires_at, source.meta.expires_ms)
        fork = Fork(source.key, req.fork_from, point, req.fork_offset or "", req.fork_sub)
        incarnation = source.meta.incarnation
    meta = Meta(content_type, incarnation, now_ms(), ttl=ttl, expires_at=expires[0] if expires else None,
                expires_ms=expires[1] if expires else None, closed=req.closed, fork=fork)
    if existing is not None:
        if _config(existing.meta) != _config(meta):
            raise DsError(409, f"stream {path!r} exists with another configuration")
        return Outcome(200, _created_headers(existing)), existing
    kind = "json" if media_type(content_type) == "application/json" else "bytes"
    lines = prefix + (wrap_messages(json_messages(req.body, allow_empty=True), ds.max_line) if kind == "json"
                      else byte_records(req.body)) if req.body else prefix
    stream = await ds.create(project, path, meta, lines)
    if fork is not None:
        async with ds.lock(fork.key):
            source_now = await ds.open(project, fork.path, expire=False)
            if source_now is not None:
                await ds.save(project, source_now, source_now.meta.replace(forks=source_now.meta.forks + 1))
    return Outcome(201, _created_headers(stream)), stream


def _created_headers(stream: Stream) -> dict[str, str]:
    headers = {"Content-Type": stream.content_type, "Stream-Next-Offset": offset_text(stream)}
    if stream.meta.closed:
        headers["Stream-Closed"] = "true"
    return headers
