"""`agui-gateway doctor DIR`: a read-only health report of every session log, `--repair` to fix.

The report reads files directly and changes nothing. `--repair` opens each session through
the store, which cuts torn tails (the bytes are set aside, never deleted), rolls back an
interrupted append and migrates legacy `messages.jsonl` logs, exactly as serving would; it
claims no legacy folder for a project. `--assign PROJECT [SESSION...]` does: it gives the named
unclaimed folders (all of them if none is named) to PROJECT. `--compact` builds the compact view's
cache of every session whose cache is missing or behind, as the gateway would on first use.
"""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import anyio

from gateway.clock import now_ms
from gateway.progress import Progress
from gateway.store.base import StoreError
from gateway.store.cursor import new_epoch
from gateway.store.fds import SCAN_CHUNK, nofollow
from gateway.store.files import FileStore
from gateway.store.index import IndexFile
from gateway.store.layout import (
    INDEX_NAME,
    LEGACY_NAME,
    LOG_NAME,
    claim_meta,
    convert_legacy_file,
    create_meta,
    read_meta,
    session_names,
)
from gateway.store.lines import scan_lines
from gateway.stream.sidecar import Record, Sidecar

MAX_EVENT_BYTES = 10 * 1024 * 1024


@dataclass
class SessionReport:
    name: str
    project: str | None = None
    events: int = 0
    bytes: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    torn_bytes: int = 0
    legacy: bool = False
    legacy_messages: int = 0
    legacy_skipped: Counter[str] = field(default_factory=Counter)
    index: str = "absent"
    meta_error: str | None = None

    @property
    def healthy(self) -> bool:
        return not self.skipped and not self.torn_bytes and not self.legacy and not self.meta_error

    def line(self) -> str:
        problems = [f"{n} {reason}" for reason, n in sorted(self.skipped.items())]
        if self.meta_error:
            problems.append(self.meta_error)
        if self.torn_bytes:
            problems.append(f"torn tail of {self.torn_bytes} bytes")
        if self.legacy:
            note = f"legacy messages.jsonl not migrated ({self.legacy_messages} messages"
            if self.legacy_skipped:
                kinds = ", ".join(f"{kind}={n}" for kind, n in sorted(self.legacy_skipped.items()))
                note += f"; {sum(self.legacy_skipped.values())} legacy lines skipped: {kinds}"
            problems.append(note + ")")
        status = "ok" if self.healthy else "; ".join(problems)
        return (f"{self.name:<40} project={self.project or '-'} events={self.events} bytes={self.bytes} "
                f"index={self.index} {status}")


def inspect_session(path: Path, max_event_bytes: int = MAX_EVENT_BYTES) -> SessionReport:
    meta_error = None
    try:
        meta = read_meta(path)
    except StoreError as exc:  # reported, and the session left alone: the store refuses it too
        meta, meta_error = None, str(exc)
    report = SessionReport(path.name, project=meta["project"] if meta else None, meta_error=meta_error)
    report.legacy = (path / LEGACY_NAME).exists()
    if report.legacy:
        conversion = convert_legacy_file(path / LEGACY_NAME)
        report.legacy_messages = len(conversion.messages)
        report.legacy_skipped.update(conversion.skipped)
    log_path = path / LOG_NAME
    if log_path.exists():
        with open(log_path, "rb", opener=nofollow) as fh:
            offset, carry = 0, b""
            while chunk := fh.read(SCAN_CHUNK):
                buf = carry + chunk
                cut = buf.rfind(b"\n") + 1
                scan = scan_lines(buf[:cut], offset, report.events + 1, max_event_bytes)
                report.events += scan.lines
                report.skipped.update(b.reason for b in scan.bad)
                offset += cut
                carry = buf[cut:]
                if len(carry) > max_event_bytes:  # an oversize line: count it without holding it
                    rest = fh.readline()
                    if rest.endswith(b"\n"):
                        report.events += 1
                        report.skipped["oversize"] += 1
                        offset += len(carry) + len(rest)
                        carry = b""
                    else:
                        carry += rest
            report.bytes = offset
            report.torn_bytes = len(carry)
    if (path / INDEX_NAME).exists():
        idx = IndexFile(str(path / INDEX_NAME))
        try:
            header, records = idx.load()
        finally:
            idx.close()
        fresh = header is not None and meta is not None and header.epoch == meta["epoch"]
        report.index = f"{len(records)} points" if fresh else "stale (rebuilt on next open)"
    return report


def session_dirs(root: Path) -> list[Path]:
    return [root / "sessions" / name for name in session_names(root / "sessions")]


async def _repair(root: Path, reports: list[SessionReport]) -> None:
    store = FileStore(root, fsync=True, max_event_bytes=MAX_EVENT_BYTES)
    try:
        for report in reports:
            # An unclaimed folder opens under any project name without being claimed (no write).
            flog = await store.open(report.project or "unclaimed", report.name, create=False)
            await flog.repair()
    finally:
        store.close()


async def _compact(root: Path, reports: list[SessionReport], progress: Progress | None) -> int:
    """Bring every session's compact cache up to date; the number of sessions it wrote records to."""
    store = FileStore(root, fsync=True, max_event_bytes=MAX_EVENT_BYTES)
    done = events = built = 0
    try:
        for report in reports:
            flog = await store.open(report.project or "unclaimed", report.name, create=False)
            sidecar = Sidecar(flog.dir, LOG_NAME)
            wrote: list[Record] = []

            def record(rec: Record, base: tuple[int, int] = (events, done), wrote: list[Record] = wrote) -> None:
                wrote.append(rec)
                if progress is not None:
                    progress.update(base[0] + rec.last, base[1] + rec.end)

            sidecar.on_record = record
            await sidecar.update(flog)
            built += bool(wrote)
            done, events = done + report.bytes, events + report.events
            if progress is not None:
                progress.update(events, done)
    finally:
        store.close()
        if progress is not None:
            progress.finish(events, done)
    return built


def assign(root: Path, project: str, names: list[str], out: TextIO) -> int:
    """Give unclaimed legacy folders to `project`: those named, or every one. Exit 1 if a named
    session is missing, unreadable or another project's (it is left as it is)."""
    folders = {p.name: p for p in session_dirs(root)}
    failed = 0
    for name in names or [n for n, folder in folders.items() if _unclaimed(folder)]:
        try:
            if name not in folders:
                raise StoreError("no such session")
            owner = _claim(folders[name], project)
        except StoreError as exc:
            owner = None
            print(f"{name}: not assigned: {exc}", file=out)
        else:
            print(f"{name}: assigned to {project}" if owner == project
                  else f"{name}: not assigned: belongs to project {owner!r}", file=out)
        failed += owner != project
    return 1 if failed else 0


def _unclaimed(folder: Path) -> bool:
    try:
        meta = read_meta(folder)
    except StoreError:
        return False  # reported as corrupt; not assigned blindly
    return meta is None or meta["project"] is None


def _claim(folder: Path, project: str) -> str | None:
    """The folder's owner once `project` has claimed it if no project had (as a write would)."""
    if read_meta(folder) is None:
        create_meta(folder, {"project": project, "epoch": new_epoch(), "createdAt": now_ms()})
    return claim_meta(folder, project)


def run_doctor(root: Path, *, repair: bool, out: TextIO, assign_to: list[str] | None = None, compact: bool = False,
               bar: TextIO | None = None) -> int:
    """Print one line per session and a summary; exit 1 if problems remain.

    `assign_to` is [PROJECT, SESSION...]: give unclaimed legacy folders to PROJECT first.
    `compact` builds missing compact caches last (sessions with a legacy log not migrated and
    unreadable meta.json are left out: opening them would write, or fail), with a progress line on
    `bar` if given.
    """
    if not root.is_dir():
        print(f"agui-gateway doctor: {root}: no such directory", file=sys.stderr)
        return 2
    if assign_to and assign(root, assign_to[0], assign_to[1:], out):
        return 1
    reports = [inspect_session(p) for p in session_dirs(root)]
    for report in reports:
        print(report.line(), file=out)
    if repair:
        broken = [r for r in reports if (r.torn_bytes or r.legacy) and not r.meta_error]
        anyio.run(_repair, root, broken)
        reports = [inspect_session(p) for p in session_dirs(root)]
        print(f"repaired {len(broken)} session(s)", file=out)
    if compact:
        todo = [r for r in reports if r.bytes and not r.legacy and not r.meta_error]
        progress = Progress(bar, None, sum(r.bytes for r in todo)) if bar is not None else None
        built = anyio.run(_compact, root, todo, progress)
        print(f"compact caches: {built} built or extended, {len(todo) - built} already up to date", file=out)
    unhealthy = sum(not r.healthy for r in reports)
    print(f"{len(reports)} session(s), {unhealthy} with problems", file=out)
    return 1 if unhealthy else 0

