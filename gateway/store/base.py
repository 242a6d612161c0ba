"""The store's contract with the rest of the gateway.

Transports and the stream reader depend on these types only, so a different backend (for
example NATS JetStream) can replace the file store without touching them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from gateway.store.changes import Changes
from gateway.store.lines import BadLine


class StoreError(Exception):
    """Base of the errors the HTTP layer maps to status codes."""

    status = 500
    code = "internal"


class SessionNotFound(StoreError):
    status = 404
    code = "not_found"


class ProjectMismatch(StoreError):
    """The session name is taken by another project, `owner`: the API answers 404 instead to a
    caller who may not read that project, so names never leak across tenants."""

    status = 409
    code = "project_mismatch"

    def __init__(self, message: str, owner: str = "") -> None:
        super().__init__(message)
        self.owner = owner


class SessionReset(StoreError):
    """An append lost a race with a reset (DELETE, or the log replaced): it is not in the log."""

    status = 409
    code = "session_reset"


class StoreUnavailable(StoreError):
    """The backing store cannot be reached (NATS down): nothing was appended, or it is not known."""

    status = 503
    code = "store_unavailable"


class TooLarge(StoreError):
    """One append is larger than the backing store can take in one message."""

    status = 413
    code = "too_large"


class LinkRefused(StoreError):
    """A file under a session folder is a symbolic link: never followed (PROTOCOL §1)."""

    code = "symlink_refused"


class DiskFull(StoreError):
    status = 507
    code = "disk_full"


@dataclass(frozen=True, slots=True)
class AppendResult:
    epoch: str
    first: int
    last: int


class Written(Protocol):
    """An append whose lines are in the log (`EventLog.write`), not yet known durable."""

    async def durable(self) -> AppendResult:
        """Return once the append is durable and visible to readers, or raise its store error."""
        ...

    def settled(self) -> AppendResult | None:
        """`durable`'s result if it needs no wait, else None (`then`); raises its store error."""
        ...

    def then(self, callback: Callable[[], None]) -> None:
        """Call `callback` in the loop once `settled` may have changed (after None)."""
        ...


@dataclass(frozen=True)
class DoneWrite:
    """A `Written` durable when written (NATS: JetStream's ack made it so)."""

    result: AppendResult

    async def durable(self) -> AppendResult:
        return self.result

    def settled(self) -> AppendResult:
        return self.result

    def then(self, callback: Callable[[], None]) -> None:
        asyncio.get_running_loop().call_soon(callback)


class EventLog(Protocol):
    """One session's log, as the stream reader and the append path see it.

    This is what a store must guarantee (the file store does; another engine must too):

    - **Lines and seqs.** The log is a sequence of `\n`-terminated lines in a byte space that
      starts at 0. Line `seq` (1-based) is the seq-th line; seqs are contiguous, every line has
      one, including lines that cannot be delivered (`next_bad`).
    - **What readers see.** `end`/`lines` is the visible prefix: whole lines whose fate is known
      (event or `BadLine`), and, where acknowledgements mean durability, only durable ones. It only
      grows within an epoch, and readers never look past it, which is how a torn, half-written or
      unacknowledged tail stays invisible.
    - **Epochs.** `epoch` is fixed for one incarnation of the log. It changes when the log is
      deleted, replaced, or found shorter than a position already served; then `end` and `lines`
      start again from 0 and `version` moves, so every reader notices and sends `reset`.
    - **Acknowledgement.** `append` returns only once its lines are all visible to readers, as
      one contiguous range in one epoch, and (with durability configured) durable. It is all or
      nothing: a failed append leaves none of its lines. An append that loses a race with a new
      epoch ends with a definite answer (acknowledged in the old epoch, or `SessionReset`),
      never waits for an incarnation that is gone.
    - **Waking.** `version` moves on every visible change; `wait_change` returns once it has.
    """

    @property
    def epoch(self) -> str: ...
    @property
    def end(self) -> int:
        """Bytes visible to readers (whole, classified, durable lines)."""
        ...

    @property
    def lines(self) -> int:
        """Lines visible to readers: seqs 1..lines."""
        ...

    @property
    def version(self) -> int:
        """Bumped on every visible change (growth, reset); readers wait for it to move."""
        ...

    async def read(self, offset: int, size: int) -> bytes:
        """Some bytes at `offset`: at most `size`, never past `end`, b"" only at `end`."""
        ...

    async def offset_of(self, seq: int) -> int:
        """Byte offset of line `seq` (1 <= seq <= lines + 1) without a scan from the start."""
        ...

    def next_bad(self, seq: int) -> BadLine | None:
        """The first undeliverable line at or after `seq`, if any."""
        ...

    async def wait_change(self, version: int) -> None:
        """Return once `version` differs from the given one."""
        ...

    def held(self, offset: int, size: int) -> bytes | None:
        """What `read` would return when the log holds it in memory (no I/O), else None."""
        ...

    @property
    def changes(self) -> Changes:
        """What `wait_change` waits on; its listeners are called inside each change (a hub's)."""
        ...

    async def append(self, lines: list[bytes]) -> AppendResult:
        """Append validated event lines (no `\n` inside) as one all-or-nothing range: `write`,
        then its `durable`."""
        ...

    async def write(self, lines: list[bytes]) -> Written:
        """The first half of `append`: the lines are in the log, after those of every earlier
        call, when it returns; they count (are visible, acknowledged) once `durable` returned.
        A writer that sends many appends writes each at once and waits for them in order, so
        that those written while one is being made durable share the next sync."""
        ...

    def write_now(self, lines: list[bytes]) -> Written | None:
        """`write` when it needs no wait, else None with nothing written (a WebSocket append is
        then taken by the app's receive loop and `write`)."""
        ...

    async def poll(self) -> None:
        """Take in changes made by other writers (growth, truncation, replacement)."""
        ...


class SessionLog(EventLog, Protocol):
    """An `EventLog` as the HTTP handlers use it: whose it is, status fields, DELETE."""

    @property
    def project(self) -> str | None:
        """None: a legacy folder no project has claimed yet (files store)."""
        ...

    session: str
    dir: Path
    """A local folder for per-session side files (the compact view's sidecar, legacy files)."""
    last_append_ms: int | None

    @property
    def bad_lines(self) -> int: ...

    async def delete(self) -> str:
        """Start a new epoch with an empty log (PROTOCOL §3 DELETE); followers get `reset`."""
        ...


class LogStore(Protocol):
    """Where sessions' logs live: the file store, or NATS JetStream."""

    on_fsync: Callable[[float], None] | None
    on_append: Callable[[SessionLog, list[bytes], float], None] | None
    """Called with each append's log, lines and seconds once it is acknowledged (keep it to a glance)."""

    @property
    def logs(self) -> Mapping[str, SessionLog]:
        """The logs open now, by session."""
        ...

    def ensure_root(self) -> None: ...

    async def open(self, project: str, session: str, *, create: bool, claim: bool = False) -> SessionLog:
        """`create` makes a missing session; `create` or `claim` (a write) claims an unclaimed one."""
        ...

    def evict(self, session: str) -> str: ...

    async def poll_all(self) -> None: ...

    def close(self) -> None: ...
