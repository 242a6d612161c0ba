"""One commit cycle for every log of the store with unsynced appends.

With `GATEWAY_FSYNC=always` an append is acknowledged only once its bytes are on disk. Syncing
each session's log on its own costs one thread hop and one journal commit per session per
commit: with hundreds of sessions appending at once the fsyncs queue behind one another and the
disk, not the CPU, sets the pace. Here every log that has unsynced appends joins the next cycle;
a cycle makes all of them durable in one worker-thread call (one `syncfs(2)` per filesystem where
the kernel reports writeback errors through it, else an fsync per file) and then releases every
waiter. An append therefore waits at most for the cycle in flight to end and for one more cycle.

Cycles run in one task of their own, started by the first waiter that finds none and ended once
no append waits: each cycle starts one turn of the event loop after the one before ended, so
that every append that turn woke joins it. A waiter only waits for its own cycle (it wakes once:
not at the end of the cycle in flight, to find that the next one is not over yet), and a
cancelled waiter cannot strand the others.
"""

from __future__ import annotations

import asyncio
import contextvars
import ctypes
import ctypes.util
import logging
import os
import platform
import time
from collections.abc import Callable, Sequence
from typing import Protocol

import anyio
import anyio.lowlevel
import anyio.to_thread

from gateway.store.base import StoreError

log = logging.getLogger("gateway.store")

SyncFiles = Callable[[Sequence[tuple[int, int]]], list[OSError | None]]
"""Makes the files of some (descriptor, filesystem device) pairs durable; one result per pair
(None: synced)."""


class Member(Protocol):
    """A log as a cycle sees it: what to sync when the cycle starts, and what to publish after."""

    def claim_sync(self) -> tuple[int, int, int, object] | None:
        """(a descriptor the cycle owns and closes, its file's device, the offset it will make
        durable, a token), or None when there is nothing this log can sync now."""

    def synced(self, goal: int, token: object) -> None:
        """The bytes up to `goal` are durable (the token is `claim_sync`'s)."""


def _kernel_at_least(major: int, minor: int) -> bool:
    try:
        found = tuple(int(x) for x in platform.release().split("-", 1)[0].split(".")[:2])
    except ValueError:
        return False
    return found >= (major, minor)


def _load_syncfs() -> Callable[[int], int] | None:
    """libc's syncfs, on Linux 5.8 and later only: before 5.8 it returned 0 even when writing some
    file back failed, and an append would be acknowledged that is not on disk."""
    if platform.system() != "Linux" or not _kernel_at_least(5, 8):
        return None
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    func = getattr(ctypes.CDLL(name, use_errno=True), "syncfs", None)
    if func is None:
        return None
    func.argtypes, func.restype = [ctypes.c_int], ctypes.c_int
    return func  # type: ignore[no-any-return]


_SYNCFS = _load_syncfs()


def fsync_each(files: Sequence[tuple[int, int]]) -> list[OSError | None]:
    results: list[OSError | None] = []
    for fd, _ in files:
        try:
            os.fsync(fd)
            results.append(None)
        except OSError as exc:
            results.append(exc)
    return results


def sync_files(files: Sequence[tuple[int, int]]) -> list[OSError | None]:
    """One `syncfs` per filesystem the files are on, when that is more than one file; an fsync
    per file for one file, without syncfs, or when syncfs fails (so that each file gets its own
    answer and a failing one does not fail the others).

    The devices come with the descriptors: a syscall per file here, in a worker thread, would
    hand the GIL back and forth with the event loop once per file."""
    if _SYNCFS is None or len(files) < 2:
        return fsync_each(files)
    devices = {dev: fd for fd, dev in files}
    if all(_SYNCFS(fd) == 0 for fd in devices.values()):
        return [None] * len(files)
    return fsync_each(files)


class _Cycle:
    __slots__ = ("done", "errors", "members")

    def __init__(self) -> None:
        self.members: dict[Member, None] = {}  # insertion-ordered set
        self.done = anyio.Event()
        self.errors: dict[Member, OSError] = {}


class CommitCycle:
    """The store's commit cycles; `cycles` and `synced_files` count them (metrics and tests)."""

    def __init__(self, sync: SyncFiles = sync_files, interval: float = 0.0) -> None:
        self._sync = sync
        self.interval = interval
        self._started = float("-inf")  # when the last cycle started (time.monotonic)
        self._next: _Cycle | None = None  # gathering members, not started
        self._driver: asyncio.Task[None] | None = None  # runs cycles while anyone waits
        self.on_sync: Callable[[float], None] | None = None  # seconds of each cycle's sync call
        self.cycles = 0
        self.synced_files = 0

    async def sync(self, member: Member) -> None:
        """Return once a cycle that started after this call synced `member` (as far as it could
        claim); StoreError if its file could not be synced."""
        cycle = self._next
        if cycle is None:
            cycle = self._next = _Cycle()
        cycle.members[member] = None
        if self._driver is None:
            # In a context of its own: its log lines are not the first waiter's connection's.
            self._driver = asyncio.get_running_loop().create_task(self._drive(), context=contextvars.Context())
        await cycle.done.wait()
        error = cycle.errors.get(member)
        if error is not None:
            raise StoreError(f"fsync failed: {error.strerror}; the append is not known to be on disk") from error

    async def _drive(self) -> None:
        """Run cycles while appends wait for one, each a loop turn after the last one ended (the
        tasks it woke append too, and join the next cycle). A cycle that raised released its
        waiters with nothing synced: their logs ask again."""
        try:
            while True:
                try:
                    await self._run()
                except Exception:
                    log.exception("commit cycle failed")
                if self._next is None:
                    break
                await anyio.lowlevel.checkpoint()
        finally:
            self._driver = None

    async def _run(self) -> None:
        cycle = self._next
        assert cycle is not None
        claims: list[tuple[Member, int, int, int, object]] = []
        settled: set[Member] = set()
        try:
            wait = self._started + self.interval - time.monotonic()
            if wait > 0:
                await anyio.sleep(wait)  # the appends of the rest of the interval join too
            self._started = time.monotonic()
            self._next = None
            for member in cycle.members:
                claim = member.claim_sync()
                if claim is not None:
                    claims.append((member, *claim))
            if claims:
                started = time.perf_counter()
                try:
                    results = await anyio.to_thread.run_sync(self._sync, [(fd, dev) for _, fd, dev, _, _ in claims])
                except OSError as exc:  # no file of this cycle is known synced
                    results = [exc] * len(claims)
                if self.on_sync is not None:
                    self.on_sync(time.perf_counter() - started)
                self.synced_files += len(claims)
                for (member, _, _, goal, token), error in zip(claims, results, strict=True):
                    settled.add(member)
                    if error is None:
                        member.synced(goal, token)
                    else:
                        cycle.errors[member] = error
        except OSError as exc:  # a descriptor or an index write failed: the rest is not known synced
            for member in cycle.members:
                if member not in settled:
                    cycle.errors[member] = exc
        finally:
            for _, fd, _, _, _ in claims:
                os.close(fd)
            if self._next is cycle:
                self._next = None
            self.cycles += 1
            cycle.done.set()
