"""`agui-gateway doctor DIR`: a read-only health report of every session log, `--repair` to fix.

The report reads files directly and changes nothing. `--repair` opens each session through
the store, which cuts torn tails (the bytes are set aside, never deleted), rolls back an
interrupted append and migrates legacy `messages.jsonl` logs, exactly as serving would.
"""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import anyio

from gateway.names import is_valid_name
from gateway.store.base import StoreError
from gateway.store.fds import SCAN_CHUNK, nofollow
from gateway.store.files import FileStore
from gateway.store.index import IndexFile
from gateway.store.layout import INDEX_NAME, LEGACY_NAME, LOG_NAME, convert_legacy_file, read_meta
from gateway.store.lines import scan_lines

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
    sessions = root / "sessions"
    if not sessions.is_dir():
        return []
    return sorted(p for p in sessions.iterdir() if p.is_dir() and not p.is_symlink() and is_valid_name(p.name))


async def _repair(root: Path, reports: list[SessionReport], project: str) -> None:
    store = FileStore(root, fsync=True, max_event_bytes=MAX_EVENT_BYTES)
    try:
        for report in reports:
            flog = await store.open(report.project or project, report.name, create=False)
            await flog.repair()
    finally:
        store.close()


def run_doctor(root: Path, *, repair: bool, out: TextIO, project: str = "default") -> int:
    """Print one line per session and a summary; exit 1 if problems remain.

    `project` claims sessions that have no meta.json yet (volumes from before the gateway).
    """
    if not root.is_dir():
        print(f"agui-gateway doctor: {root}: no such directory", file=sys.stderr)
        return 2
    reports = [inspect_session(p) for p in session_dirs(root)]
    for report in reports:
        print(report.line(), file=out)
    if repair:
        broken = [r for r in reports if (r.torn_bytes or r.legacy) and not r.meta_error]
        anyio.run(_repair, root, broken, project)
        reports = [inspect_session(p) for p in session_dirs(root)]
        print(f"repaired {len(broken)} session(s)", file=out)
    unhealthy = sum(not r.healthy for r in reports)
    print(f"{len(reports)} session(s), {unhealthy} with problems", file=out)
    return 1 if unhealthy else 0

