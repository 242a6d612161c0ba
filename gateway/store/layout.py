"""Where a session's files are, and its metadata (PROTOCOL §1, the platform backend's layout).

    <root>/sessions/<session>/agui-events.jsonl   the log
    <root>/sessions/<session>/agui-events.idx     sparse index + header (see `index.py`)
    <root>/sessions/<session>/meta.json           owning project, epoch, creation time, lastSeen
                                                  (project null: a legacy folder no project claimed)
    <root>/sessions/<session>/messages.jsonl      a pre-AG-UI log, migrated on first access

Every file here is opened without following symbolic links.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson

from gateway.names import is_valid_name
from gateway.store.base import StoreError
from gateway.store.cursor import is_epoch, new_epoch
from gateway.store.fds import fsync_dir, nofollow, open_nofollow, write_all
from gateway.store.legacy import LegacyConversion, convert_legacy

LOG_NAME = "agui-events.jsonl"
INDEX_NAME = "agui-events.idx"
META_NAME = "meta.json"
LEGACY_NAME = "messages.jsonl"


def session_names(sessions_dir: Path) -> list[str]:
    """The session folders of `<root>/sessions`, sorted: folders with valid names, links not
    followed, so nothing outside the root is listed (one `scandir`, no stat per entry)."""
    try:
        with os.scandir(sessions_dir) as entries:
            names = [e.name for e in entries if is_valid_name(e.name) and e.is_dir(follow_symlinks=False)]
    except (FileNotFoundError, NotADirectoryError):
        return []
    names.sort()
    return names


@contextlib.contextmanager
def session_lock(session_dir: Path) -> Iterator[None]:
    """An exclusive flock on the session folder, across processes: epoch changes go one at a time.

    Held only around reading and writing meta.json (milliseconds), so it is taken blocking.
    """
    fd = os.open(session_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def read_meta(session_dir: Path) -> dict[str, Any] | None:
    try:
        with open(session_dir / META_NAME, "rb", opener=nofollow) as fh:
            raw = fh.read()
    except FileNotFoundError:
        return None
    try:
        meta = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise StoreError(f"corrupt {session_dir / META_NAME}: {exc}") from exc
    if not isinstance(meta, dict) or not isinstance(meta.get("project", 0), str | None):
        raise StoreError(f"corrupt {session_dir / META_NAME}: no project")
    if not isinstance(meta.get("epoch"), str) or not is_epoch(meta["epoch"]):
        meta["epoch"] = new_epoch()
    return meta


def write_meta(session_dir: Path, meta: dict[str, Any]) -> None:
    """Atomic replace: a crash leaves the old meta or the new one. The caller holds `session_lock`.

    A `lastSeen` on disk fresher than `meta`'s (another process kept it) is kept.
    The temporary file is created afresh (O_EXCL), so a link planted under its name is removed,
    never written through; `os.replace` then replaces a linked `meta.json` itself, not its target.
    """
    with contextlib.suppress(StoreError):
        if (seen := _last_seen(read_meta(session_dir))) > _last_seen(meta):
            meta = meta | {"lastSeen": seen}
    tmp = session_dir / f".{META_NAME}.tmp"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    _write_new(tmp, meta)
    os.replace(tmp, session_dir / META_NAME)
    fsync_dir(session_dir)


def agree_epoch(session_dir: Path, meta: dict[str, Any], current: str, *, ours: bool,
                then: Callable[[], None] | None = None) -> tuple[str, bool]:
    """The epoch after a reset of the log in epoch `current`, agreed with every process serving
    this folder: (epoch, adopted from meta.json?).

    Workers of one server, or gateways sharing a volume, each notice the same deleted or replaced
    file: the first to take the session lock starts the new epoch and the others adopt it from
    meta.json, so every process hands out the same cursors. `ours` (our own DELETE) always starts
    one, and runs `then` (the unlink) only once meta.json names it. `meta` is updated in place.
    """
    with session_lock(session_dir):
        with contextlib.suppress(StoreError):
            found = read_meta(session_dir)
            if not ours and found is not None and found["epoch"] != current:
                meta["epoch"] = found["epoch"]
                return str(found["epoch"]), True
        epoch = meta["epoch"] = new_epoch()
        write_meta(session_dir, meta)
        if then is not None:
            then()
    return epoch, False


def claim_meta(session_dir: Path, project: str | None) -> str | None:
    """The folder's owner, once `project` (unless None) has claimed it if no project had: another
    process (a worker, `doctor --assign`) may have claimed it first. None: still unclaimed, or
    the meta is gone."""
    with session_lock(session_dir):
        meta = read_meta(session_dir)
        if meta is not None and meta["project"] is None and project is not None:
            meta = meta | {"project": project}
            write_meta(session_dir, meta)
        return meta["project"] if meta is not None else None


def keep_last_seen(session_dir: Path, project: str, last_seen: int) -> None:
    """Record when the session was last watched, unless meta.json already says later (several
    processes keep it) or the folder now belongs to another project or to none."""
    with session_lock(session_dir):
        meta = read_meta(session_dir)
        if meta is not None and meta["project"] == project and _last_seen(meta) < last_seen:
            write_meta(session_dir, meta | {"lastSeen": last_seen})


def kept_last_seen(session_dir: Path) -> int | None:
    """The lastSeen meta.json holds (None: never kept, or the meta is unreadable)."""
    try:
        return _last_seen(read_meta(session_dir)) or None
    except (OSError, StoreError):
        return None


def _last_seen(meta: dict[str, Any] | None) -> int:
    seen = (meta or {}).get("lastSeen")
    return seen if isinstance(seen, int) else 0


def create_meta(session_dir: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """A new session's first meta, or the one another process wrote first: the meta in force.

    Two processes (workers of one server, gateways on one volume) may create the same session at
    once; both must end up with the same epoch. The meta is written under a name of its own and
    then hard-linked into place, which fails if `meta.json` exists: the first one stays, whole.
    """
    tmp = session_dir / f".{META_NAME}.{os.getpid()}-{secrets.token_hex(4)}.tmp"
    _write_new(tmp, meta)
    try:
        os.link(tmp, session_dir / META_NAME)
    except FileExistsError:
        first = read_meta(session_dir)
        if first is None:  # removed again in between: the session is being deleted
            raise StoreError(f"{session_dir / META_NAME} vanished while the session was created") from None
        return first
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK):
            raise
        os.replace(tmp, session_dir / META_NAME)  # no hard links here: last writer wins, as before
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    fsync_dir(session_dir)
    return meta


def _write_new(path: Path, meta: dict[str, Any]) -> None:
    """Write `meta` to a file that must not exist yet (O_EXCL: never through a planted link), durably."""
    fd = open_nofollow(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    try:
        write_all(fd, orjson.dumps(meta, option=orjson.OPT_INDENT_2))
        os.fsync(fd)
    finally:
        os.close(fd)


def convert_legacy_file(path: Path) -> LegacyConversion:
    with open(path, "rb", opener=nofollow) as fh:
        return convert_legacy(fh)
