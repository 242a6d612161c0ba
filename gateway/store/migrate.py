"""`agui-gateway migrate`: session logs from the file layout into NATS JetStream and back, cursors kept.

To NATS, one session at a time: the file's epoch becomes the epoch of a marker (with the owning
project, the creation time and the list of lines the file store skips), then the file's visible
lines follow, as they are, in messages of up to about 1 MiB of whole lines. Seqs and byte offsets
are those of the file, and a replay reads a few large messages. Each message is published on the
condition that the subject's last message is the one before it, so what NATS holds of a session
is always a prefix of the file's log: a rerun reads the subject's last message and goes on after
it (an interrupted run resumes, a finished one changes nothing, appends made to the file since
are copied).

From NATS, each session's current epoch is written to a folder of its own under
`<state dir>/migrating/` (log, then meta.json) and renamed into `sessions/` once whole: a session
is there entirely or not at all, and a rerun skips those already there with the same epoch and size.

A session found in another state on the other side (another epoch, more lines, another owner) is
left alone and reported, never overwritten.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal, Protocol

import anyio
import anyio.to_thread
import orjson

from gateway.clock import now_ms
from gateway.names import is_valid_name
from gateway.store.base import StoreError
from gateway.store.fds import fsync_dir
from gateway.store.filelog import FileLog
from gateway.store.files import FileStore
from gateway.store.layout import LOG_NAME, create_meta, read_meta, session_names
from gateway.store.lines import BadLine
from gateway.store.nats import layout
from gateway.store.nats.compact import Subjects, epoch_marker
from gateway.store.nats.conn import Conflict, NatsConn, Stored
from gateway.store.nats.known import CACHE_BYTES
from gateway.store.nats.layout import Placed
from gateway.store.nats.log import HEADROOM, NatsLog
from gateway.store.nats.sessions import SessionDirectory

RECONNECTS = 4
READ_BYTES = 8 * 1024 * 1024
"""Bytes of messages asked for in one batched read when copying out of NATS."""
WORK_DIR = "migrating"

Status = Literal["copied", "up to date", "refused"]


@dataclass(frozen=True, slots=True)
class Outcome:
    session: str
    status: Status
    events: int = 0  # lines this run wrote
    bytes: int = 0
    detail: str = ""

    def line(self) -> str:
        text = f"{self.session}: {self.status}"
        if self.status == "copied":
            text += f" ({self.events} events, {self.bytes / 1e6:.1f} MB)"
        return text + (f": {self.detail}" if self.detail else "")


class Watcher(Protocol):
    """Where a migration reports how far it got (the command line draws it)."""

    def start(self, sessions: int, total_bytes: int) -> None: ...

    def copied(self, events: int, nbytes: int) -> None: ...

    def finished(self, outcome: Outcome) -> None: ...


class Refused(Exception):
    """This session is left as it is, for the reason given."""


def nats_conn(servers: tuple[str, ...], stream: str, replicas: int, *, creds: str, token_file: str) -> NatsConn:
    """A connection that gives up after a few attempts (about 2 s): the command says NATS is
    unreachable instead of waiting for it; a rerun goes on where it stopped."""
    return NatsConn(servers, stream, replicas, creds=creds, token_file=token_file, reconnect_attempts=RECONNECTS)


async def _each(names: list[str], watcher: Watcher, one: _One) -> list[Outcome]:
    outcomes = []
    for name in names:
        try:
            outcome = await one(name)
        except Refused as exc:
            outcome = Outcome(name, "refused", detail=str(exc))
        watcher.finished(outcome)
        outcomes.append(outcome)
    return outcomes


class _One(Protocol):
    async def __call__(self, name: str) -> Outcome: ...


# -- files -> NATS ------------------------------------------------------------------------------


def _log_size(session_dir: Path) -> int:
    try:
        return (session_dir / LOG_NAME).lstat().st_size
    except OSError:
        return 0


async def to_nats(root: Path, conn: NatsConn, watcher: Watcher, *, project: str, max_event_bytes: int) -> list[Outcome]:
    """Copy every session of the state dir `root` into NATS (sessions without meta.json go to `project`)."""
    store = FileStore(root, fsync=False, max_event_bytes=max_event_bytes)
    names = session_names(store.sessions_dir)
    directory = SessionDirectory(conn)
    await directory.ensure_bucket()
    watcher.start(len(names), sum(_log_size(store.sessions_dir / n) for n in names))

    async def one(name: str) -> Outcome:
        try:
            meta = await anyio.to_thread.run_sync(read_meta, store.session_dir(name))
            # an unclaimed legacy folder is claimed for `project`, as `doctor --assign` would
            owner = (meta or {}).get("project") or project
            flog = await store.open(owner, name, create=False, claim=True)
        except StoreError as exc:
            raise Refused(f"cannot be read: {exc}") from exc
        try:
            outcome = await _session_to_nats(flog, owner, conn, watcher)
            created = flog.meta.get("createdAt")
            await directory.ensure(owner, name, created if isinstance(created, int) else None,
                                   {k: v for k, v in flog.meta.items() if k != "epoch"})
            return outcome
        finally:
            store.evict(name)

    try:
        return await _each(names, watcher, one)
    finally:
        store.close()


def _all_bad(flog: FileLog, lines: int) -> list[BadLine]:
    out: list[BadLine] = []
    while (bad := flog.next_bad(out[-1].seq + 1 if out else 1)) is not None and bad.seq <= lines:
        out.append(bad)
    return out


async def _session_to_nats(flog: FileLog, project: str, conn: NatsConn, watcher: Watcher) -> Outcome:
    subject = layout.log_subject(conn.stream, flog.session)
    epoch, lines, end = flog.epoch, flog.lines, flog.end  # what is there now is what this run copies
    bad = _all_bad(flog, lines)
    got = await conn.get(last_by=subject)
    head = layout.placed(got.sseq, got.headers, len(got.data)) if got is not None else None
    fresh = head is None
    if head is None:
        head = await _publish_marker(conn, subject, flog, project, bad)
    elif head.epoch != epoch or head.project != project:
        raise Refused(f"NATS holds epoch {head.epoch} of project {head.project!r}, the file epoch {epoch} of "
                      f"{project!r} (reset or created on one side since): left as it is")
    elif head.last > lines:
        raise Refused(f"NATS holds {head.last} lines of this epoch, the file {lines}: left as it is")
    elif head.bad != len(bad):
        raise Refused(f"the file has {len(bad)} skipped lines, NATS lists {head.bad}: left as it is")
    watcher.copied(0, head.end)
    seq, offset, expect = head.last + 1, head.end, head.sseq
    if seq <= lines and offset != await flog.offset_of(seq):
        raise Refused(f"NATS and the file disagree on where line {seq} starts: left as it is")
    events = 0
    pack = min(conn.max_payload - HEADROOM, CACHE_BYTES // 4)  # messages a replica keeps in its cache
    while seq <= lines:
        data = await _whole_lines(flog, offset, min(pack, end - offset), min(conn.max_payload - HEADROOM, end - offset))
        count = data.count(b"\n")
        headers = layout.event_headers(epoch, project, head.base, seq, seq + count - 1, offset, expect)
        if bad:
            headers[layout.BAD_LINES] = str(len(bad))
        try:
            expect = await conn.publish(subject, data, headers)
        except Conflict:
            raise Refused("another writer appended to this session in NATS meanwhile: left as it is") from None
        seq, offset, events = seq + count, offset + len(data), events + count
        watcher.copied(count, len(data))
    status: Status = "copied" if events or fresh else "up to date"
    return Outcome(flog.session, status, events, offset - head.end)


async def _publish_marker(conn: NatsConn, subject: str, flog: FileLog, project: str, bad: list[BadLine]) -> Placed:
    created = flog.meta.get("createdAt")
    headers = layout.marker_headers(flog.epoch, project, created if isinstance(created, int) else now_ms(), 0)
    if bad:
        headers[layout.BAD], headers[layout.BAD_LINES] = layout.bad_header(bad), str(len(bad))
        if len(headers[layout.BAD]) > conn.max_payload - HEADROOM:
            raise Refused(f"{len(bad)} skipped lines are too many to list in one NATS message "
                          f"(max_payload {conn.max_payload}); repair the log first (`agui-gateway doctor`)")
    try:
        sseq = await conn.publish(subject, b"", headers)
    except Conflict:
        raise Refused("created in NATS by another writer meanwhile: left as it is") from None
    return Placed(sseq, flog.epoch, project, sseq, 0, 0, 0, 0, len(bad))


async def _whole_lines(flog: FileLog, offset: int, want: int, most: int) -> bytes:
    """Whole lines from `offset`: as many as fit in `want` bytes, or one line of up to `most`."""
    data = await _read(flog, offset, want)
    cut = data.rfind(b"\n") + 1
    if cut == 0:
        data = await _read(flog, offset, most)
        cut = data.find(b"\n") + 1
        if cut == 0:
            raise Refused(f"a line at byte {offset} is longer than one NATS message can hold ({most} bytes): "
                          "raise the server's max_payload")
    return data[:cut]


async def _read(flog: FileLog, offset: int, size: int) -> bytes:
    epoch, parts, have = flog.epoch, [], 0
    while have < size:
        chunk = await flog.read(offset + have, size - have)
        if not chunk or flog.epoch != epoch:
            raise Refused("the log was reset or cut while it was copied: run again")
        parts.append(chunk)
        have += len(chunk)
    return b"".join(parts)


# -- NATS -> files ------------------------------------------------------------------------------


async def from_nats(root: Path, conn: NatsConn, watcher: Watcher, *, max_event_bytes: int) -> list[Outcome]:
    """Write every session of the NATS stream into the state dir `root`, in the file layout."""
    prefix = layout.log_subject(conn.stream, "")
    heads: dict[str, tuple[Stored, Placed]] = {}
    for got in await conn.last_of(conn.stream, await conn.subjects(conn.stream, prefix + ">")):
        name = got.headers.get("Nats-Subject", "").removeprefix(prefix)
        head = layout.placed(got.sseq, got.headers, len(got.data))
        if head is not None and is_valid_name(name):
            heads[name] = (got, head)
    heads = dict(sorted(heads.items()))
    watcher.start(len(heads), sum(head.end for _, head in heads.values()))
    store = FileStore(root, fsync=False, max_event_bytes=max_event_bytes)
    store.ensure_root()
    directory = SessionDirectory(conn)
    await directory.ensure_bucket()

    async def one(name: str) -> Outcome:
        got, head = heads[name]
        entry = await conn.get(last_by=directory.subject(head.project, name), stream=directory.stream)
        try:
            return await _session_from_nats(store, conn, name, got, head, watcher, _fields(entry))
        finally:
            store.evict(name)

    try:
        return await _each(list(heads), watcher, one)
    finally:
        store.close()
        await anyio.to_thread.run_sync(_remove_if_empty, root / WORK_DIR)


def _remove_if_empty(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.rmdir()


def _fields(entry: Stored | None) -> dict[str, Any]:
    """The meta of a session's entry in the session list, if it has a readable one."""
    try:
        fields = orjson.loads(entry.data) if entry is not None else {}
    except orjson.JSONDecodeError:
        return {}
    return fields if isinstance(fields, dict) else {}


async def _session_from_nats(store: FileStore, conn: NatsConn, name: str, got: Stored, head: Placed,
                             watcher: Watcher, fields: dict[str, Any]) -> Outcome:
    dest = store.sessions_dir / name
    if dest.exists() or dest.is_symlink():
        meta = await anyio.to_thread.run_sync(_meta_or_none, dest)
        if meta is not None and (meta["epoch"], meta["project"]) == (head.epoch, head.project) \
                and _log_size(dest) == head.end:
            watcher.copied(0, head.end)
            return Outcome(name, "up to date")
        raise Refused("the state dir already has another session of this name: left as it is")
    marker = got if head.marker else await epoch_marker(conn, Subjects.of(conn.stream, name), head.base)
    if marker is None:
        raise Refused("the epoch's first message is gone from NATS")
    work = store.root / WORK_DIR / name
    await anyio.to_thread.run_sync(_fresh_dir, work)
    out = await anyio.to_thread.run_sync(open, work / LOG_NAME, "wb")
    try:
        written = await _copy_epoch(conn, name, head, out, watcher)
        await anyio.to_thread.run_sync(out.flush)
        await anyio.to_thread.run_sync(os.fsync, out.fileno())
    finally:
        out.close()
    created = fields.get("createdAt") or int(marker.headers.get(layout.CREATED, 0)) or now_ms()
    meta = {**fields, "project": head.project, "epoch": head.epoch, "createdAt": created}
    await anyio.to_thread.run_sync(create_meta, work, meta)
    try:
        await anyio.to_thread.run_sync(os.rename, work, dest)
    except OSError as exc:
        raise Refused(f"could not move the copy into place ({exc}); it is in {work}") from exc
    await anyio.to_thread.run_sync(fsync_dir, store.sessions_dir)
    flog = await store.open(head.project, name, create=False)  # classifies the log and writes its index
    if flog.lines != head.last or flog.epoch != head.epoch:
        raise Refused(f"written, but the file store reads {flog.lines} lines of epoch {flog.epoch} "
                      f"where NATS has {head.last} of {head.epoch}")
    return Outcome(name, "copied", head.last, written)


def _meta_or_none(session_dir: Path) -> dict[str, object] | None:
    try:
        return read_meta(session_dir)
    except StoreError:
        return None


def _fresh_dir(path: Path) -> None:
    """An empty folder at `path`: what an interrupted run left there is dropped (it was never in place)."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)


async def _copy_epoch(conn: NatsConn, name: str, head: Placed, out: BinaryIO, watcher: Watcher) -> int:
    """Write the epoch's bytes up to `head`'s end, read as a replica reads them (whether compacted
    or not); the bytes written."""
    nlog = NatsLog(conn, name, Path(name))
    await nlog.refresh()
    written = 0
    while written < head.end:
        data = await nlog.read(written, min(READ_BYTES, head.end - written)) if nlog.epoch == head.epoch else b""
        if not data:
            raise Refused("the session was reset in NATS while it was copied: run again")
        await anyio.to_thread.run_sync(out.write, data)
        written += len(data)
        watcher.copied(data.count(b"\n"), len(data))
    return written
