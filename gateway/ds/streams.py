"""Durable streams on the gateway's store: every stream is logs of the store, read by `LogReader`.

A stream created through the protocol is two logs of the store, named from its project and path
(`ds_<hash>`: not a session name, so session lists never show them): the data log (its messages
or appends, `records.py`) and the meta log (its state, `meta.py`). An AG-UI session is a stream
too: its own log, each event a message, with a meta log only once an idempotent producer writes.

A fork reads its source's logs up to the fork point, then its own: a chain of `Segment`s, so its
history is never copied. Positions (the offsets' second half) are lines of the chain.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import anyio

from gateway.clock import now_ms
from gateway.ds.chain import ChainReader, Segment
from gateway.ds.meta import Meta, meta_of
from gateway.ds.protocol import DsError, incarnation_of, is_json
from gateway.ds.records import event_messages, json_array, record_bytes, unwrap_messages
from gateway.store.base import EventLog, LogStore, SessionLog, SessionNotFound
from gateway.store.fds import flock, open_nofollow

Kind = Literal["session", "json", "bytes"]
SESSION_CONTENT_TYPE = "application/json"


def stream_key(project: str, path: str) -> str:
    """The store name of a stream's data log; its meta log is `<key>_m`."""
    return "ds_" + hashlib.sha256(f"{project}\0{path}".encode()).hexdigest()[:40]


def meta_key(key: str) -> str:
    return key + "_m"


@dataclass(slots=True)
class Stream:
    kind: Kind
    key: str
    data: SessionLog
    meta_log: SessionLog | None
    meta: Meta
    segments: list[Segment]
    seen: tuple[str, int] = ("", -1)
    """The meta log's epoch and lines when `meta` was read from it."""

    @property
    def tail(self) -> int:
        return self.segments[-1].end

    @property
    def content_type(self) -> str:
        return self.meta.content_type

    def body(self, parts: list[bytes]) -> bytes:
        """The response body of whole lines read from the chain."""
        if self.kind == "bytes":
            return b"".join(record_bytes(p) for p in parts)
        if self.kind == "json":
            return json_array([unwrap_messages(p) for p in parts])
        return json_array([event_messages(p) for p in parts])


async def last_line(log: EventLog) -> bytes | None:
    if log.lines == 0:
        return None
    offset = await log.offset_of(log.lines)
    chunks = []
    while offset < log.end:
        chunk = await log.read(offset, log.end - offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks).rstrip(b"\n")


class DurableStreams:
    """The streams of every project on one store, with each stream's writes one at a time."""

    def __init__(self, store: LogStore, max_line: int, lock_dir: Path | None = None) -> None:
        self.store = store
        self.max_line = max_line
        self.lock_dir = lock_dir
        self._locks: weakref.WeakValueDictionary[str, anyio.Lock] = weakref.WeakValueDictionary()
        self._touched: dict[str, int] = {}  # streams with a TTL: last read or write here
        self._started_ms = now_ms()

    @contextlib.asynccontextmanager
    async def lock(self, key: str) -> AsyncIterator[None]:
        """A stream's writes one at a time: in this process (a lock that lives while someone holds
        or awaits it), and with `lock_dir` (the state dir's `ds-locks`) across every process that
        serves the state dir (`--workers N`, gateways on a shared volume), by a flock."""
        local = self._locks.get(key)
        if local is None:
            local = self._locks[key] = anyio.Lock()
        async with local:
            if self.lock_dir is None:
                yield
                return
            self.lock_dir.mkdir(parents=True, exist_ok=True)
            fd = open_nofollow(self.lock_dir / key, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                await flock(fd)
                yield
            finally:
                os.close(fd)  # releases the flock

    # -- opening ----------------------------------------------------------------------------

    async def _log(self, project: str, key: str, *, create: bool) -> SessionLog | None:
        try:
            log = await self.store.open(project, key, create=create)
        except SessionNotFound:
            return None
        await log.poll()
        return log

    async def open(self, project: str, path: str, *, expire: bool = True) -> Stream | None:
        """The stream at `path`, or None if there is none (never created, deleted or expired).

        An expired stream is deleted here (under its lock); a caller that holds the lock opens with
        `expire=False` and asks `expired` itself."""
        key = stream_key(project, path)
        meta_log = await self._log(project, meta_key(key), create=False)
        if meta_log is None:
            return None
        seen = (meta_log.epoch, meta_log.lines)
        line = await last_line(meta_log)
        if line is None:
            return None
        meta = meta_of(line)
        data = await self._log(project, key, create=True)
        assert data is not None
        kind: Kind = "json" if is_json(meta.content_type) else "bytes"
        stream = Stream(kind, key, data, meta_log, meta, [], seen)
        base = 0
        if meta.fork is not None:
            source = await self.open(project, meta.fork.path, expire=False)  # soft-deleted or expired: still read
            if source is None:
                raise DsError(500, f"the history of fork {path!r} is gone")
            base = meta.fork.point
            stream.segments = [Segment(s.log, s.base, base if s.limit is None else min(s.limit, base))
                               for s in source.segments if s.base < base]
        stream.segments.append(Segment(data, base, None))
        if expire and not meta.deleted and self.expired(stream):
            async with self.lock(key):
                fresh = await self.open(project, path, expire=False)
                if fresh is not None and not fresh.meta.deleted and self.expired(fresh):
                    await self.remove(project, fresh)
            return None
        return stream

    async def session(self, project: str, log: SessionLog, *, writer_state: bool = True) -> Stream:
        """An AG-UI session as a stream: its events are the messages. Its writer state (producers,
        Stream-Seq) is looked up only for writes (`writer_state`): no read depends on it."""
        key = stream_key(project, "sessions/" + log.session)
        meta_log = await self._log(project, meta_key(key), create=False) if writer_state else None
        stream = Stream("session", key, log, meta_log,
                        Meta(SESSION_CONTENT_TYPE, incarnation_of(log.epoch), now_ms()), [Segment(log, 0, None)])
        await self.refresh(stream)
        return stream

    # -- TTL --------------------------------------------------------------------------------

    def touch(self, stream: Stream) -> None:
        if stream.meta.ttl is not None:
            self._touched[stream.key] = now_ms()

    def expired(self, stream: Stream) -> bool:
        meta, now = stream.meta, now_ms()
        if meta.expires_ms is not None and now >= meta.expires_ms:
            return True
        if meta.ttl is not None:
            seen = self._touched.get(stream.key, max(meta.created_ms, self._started_ms))
            return now - seen >= meta.ttl * 1000
        return False

    # -- writing ----------------------------------------------------------------------------

    async def save(self, project: str, stream: Stream, meta: Meta) -> None:
        """Append the stream's new state to its meta log (made on first use, for a session)."""
        if stream.meta_log is None:
            stream.meta_log = await self._log(project, meta_key(stream.key), create=True)
            assert stream.meta_log is not None
        await stream.meta_log.append([meta.line()])
        stream.meta = meta

    async def create(self, project: str, path: str, meta: Meta, lines: list[bytes]) -> Stream:
        """A new stream: its data first, then its state, whose line is what makes it exist."""
        key = stream_key(project, path)
        data = await self._log(project, key, create=True)
        meta_log = await self._log(project, meta_key(key), create=True)
        assert data is not None and meta_log is not None
        if data.lines:  # what a crash left of a creation, or of a deletion: not part of this stream
            await data.delete()
        if meta.fork is None:
            meta = meta.replace(incarnation=incarnation_of(data.epoch))
        if lines:
            await data.append(lines)
        await meta_log.append([meta.line()])
        stream = await self.open(project, path, expire=False)
        assert stream is not None
        self.touch(stream)
        return stream

    async def remove(self, project: str, stream: Stream) -> None:
        """DELETE (the stream's lock held): hidden while forks still read it, else gone (its
        source too, if it was waiting for its last fork)."""
        if stream.meta.forks > 0:
            await self.save(project, stream, stream.meta.replace(deleted=True))
            return
        assert stream.meta_log is not None
        await stream.meta_log.delete()
        await stream.data.delete()
        self._touched.pop(stream.key, None)
        fork = stream.meta.fork
        if fork is not None:
            async with self.lock(fork.key):
                source = await self.open(project, fork.path, expire=False)
                if source is not None:
                    left = source.meta.replace(forks=max(0, source.meta.forks - 1))
                    if left.deleted and left.forks == 0:
                        source.meta = left
                        await self.remove(project, source)
                    else:
                        await self.save(project, source, left)

    # -- reading ----------------------------------------------------------------------------

    @staticmethod
    def reader(stream: Stream, position: int) -> ChainReader:
        return ChainReader(stream.segments, position)

    async def wait(self, stream: Stream, versions: tuple[int, int], seconds: float) -> None:
        """Until the stream's own data or its state changes, or `seconds` passed."""
        with anyio.move_on_after(seconds):
            async with anyio.create_task_group() as tg:
                async def changed(log: EventLog, version: int) -> None:
                    await log.wait_change(version)
                    tg.cancel_scope.cancel()

                tg.start_soon(changed, stream.data, versions[0])
                if stream.meta_log is not None:
                    tg.start_soon(changed, stream.meta_log, versions[1])

    async def refresh(self, stream: Stream, *, poll: bool = True) -> None:
        """Take in what changed since the stream was opened: other writers' appends (`poll`; a
        live read is woken by the store, which polls what it waits on), a new state (read again
        only when its log moved). A session's writer state of an earlier epoch is gone with it."""
        log = stream.meta_log
        if poll:
            await stream.data.poll()
            if log is not None:
                await log.poll()
        if log is None:
            return
        if stream.seen == (log.epoch, log.lines):
            return
        stream.seen = (log.epoch, log.lines)
        line = await last_line(log)
        meta = meta_of(line) if line is not None else None
        if stream.kind != "session":
            stream.meta = meta or stream.meta
            return
        incarnation = incarnation_of(stream.data.epoch)
        stream.meta = meta if meta is not None and meta.incarnation == incarnation else \
            Meta(SESSION_CONTENT_TYPE, incarnation, now_ms())

    @staticmethod
    def versions(stream: Stream) -> tuple[int, int]:
        return stream.data.version, stream.meta_log.version if stream.meta_log is not None else -1
