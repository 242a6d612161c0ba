"""One commit cycle for every log of the store with unsynced appends.

With `GATEWAY_FSYNC=always` an append is acknowledged only once its bytes are on disk. Syncing
each session's log on its own costs one thread hop and one journal commit per session per
commit: with hundreds of sessions appending at once the fsyncs queue behind one another and the
disk, not the CPU, sets the pace. Here every log that has unsynced appends joins the next cycle;
a cycle makes all of them durable in one call in the store's sync thread (one `syncfs(2)` per
filesystem where the kernel reports writeback errors through it, else an fsync per file) and
then releases every waiter. An append therefore waits at most for the cycle in flight to end and
for one more cycle.

A cycle costs the event loop two plain callbacks and no task: one claims what the cycle will
sync (a turn after the first waiter came, so that every append that turn woke joins it, and no
sooner than `interval` after the last cycle began), the other, which the sync thread schedules
when it is done, publishes what became durable, wakes the waiters and starts the next cycle if
anyone waits for one. A loop whose turns grow long (a burst of new connections) therefore
delays a cycle by about two turns, not by the four or five a task's steps would take. A
cancelled waiter cannot strand the others: nothing of a cycle runs in a waiter.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import errno
import logging
import os
import platform
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol

import anyio

from gateway.store.base import AppendResult, StoreError

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
    __slots__ = ("claims", "done", "errors", "members", "then")

    def __init__(self) -> None:
        self.members: dict[Member, None] = {}  # insertion-ordered set
        self.claims: list[tuple[Member, int, int, int, object]] = []  # member, fd, device, goal, token
        self.done = anyio.Event()
        self.errors: dict[Member, OSError] = {}
        self.then: list[Callable[[], None]] = []  # called once it is done, in the loop, in order

    def check(self, member: Member) -> None:
        """StoreError if this cycle could not sync `member`'s file."""
        error = self.errors.get(member)
        if error is not None:
            raise StoreError(f"fsync failed: {error.strerror}; the append is not known to be on disk") from error


Finish = Callable[[_Cycle, "list[OSError | None]", float], None]

IDLE_SECONDS = 10.0
"""A sync thread with nothing to do for this long ends; the next cycle starts another."""


class SyncThread:
    """The thread that runs a store's sync calls, one cycle at a time, and hands each result back
    to the event loop with one `call_soon_threadsafe`."""

    def __init__(self, sync: SyncFiles) -> None:
        self._sync = sync
        self._jobs: queue.SimpleQueue[tuple[asyncio.AbstractEventLoop, _Cycle, Finish]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @property
    def alive(self) -> bool:
        return self._thread is not None

    def submit(self, loop: asyncio.AbstractEventLoop, cycle: _Cycle, finish: Finish) -> None:
        self._jobs.put((loop, cycle, finish))
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="gateway-sync", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                loop, cycle, finish = self._jobs.get(timeout=IDLE_SECONDS)
            except queue.Empty:
                with self._lock:
                    if self._jobs.empty():
                        self._thread = None
                        return
                continue
            started = time.perf_counter()
            try:
                results = self._sync([(fd, dev) for _, fd, dev, _, _ in cycle.claims])
            except OSError as exc:  # no file of this cycle is known synced
                results = [exc] * len(cycle.claims)
            except Exception as exc:  # a bug: the cycle still ends, with an error for each file
                log.exception("sync call failed")
                results = [OSError(errno.EIO, f"sync call failed: {exc!r}")] * len(cycle.claims)
            try:
                loop.call_soon_threadsafe(finish, cycle, results, time.perf_counter() - started)
            except RuntimeError:  # the loop is closed: nobody waits any more
                for _, fd, _, _, _ in cycle.claims:
                    os.close(fd)


class CommitCycle:
    """The store's commit cycles; `cycles` and `synced_files` count them (metrics and tests)."""

    def __init__(self, sync: SyncFiles = sync_files, interval: float = 0.0) -> None:
        self.interval = interval
        self.thread = SyncThread(sync)
        self._started = float("-inf")  # when the last cycle was claimed (loop time)
        self._next: _Cycle | None = None  # gathering members, not claimed
        self._in_flight = False  # a cycle is syncing
        self._scheduled = False  # the next cycle's claim is scheduled
        self.on_sync: Callable[[float], None] | None = None  # seconds of each cycle's sync call
        self.cycles = 0
        self.synced_files = 0

    async def sync(self, member: Member) -> None:
        """Return once a cycle that started after this call synced `member` (as far as it could
        claim); StoreError if its file could not be synced."""
        cycle = self.join(member)
        await cycle.done.wait()
        cycle.check(member)

    def join(self, member: Member) -> _Cycle:
        """The cycle that will sync `member` next (the one gathering members, not yet claimed)."""
        cycle = self._next
        if cycle is None:
            cycle = self._next = _Cycle()
        cycle.members[member] = None
        if not self._in_flight and not self._scheduled:
            self._schedule(asyncio.get_running_loop())
        return cycle

    def _schedule(self, loop: asyncio.AbstractEventLoop, *, now: bool = False) -> None:
        """Claim the next cycle: `now` (the waiters came in earlier turns), else after this turn
        (the appends it woke join too); no sooner than `interval` after the last claim."""
        at = self._started + self.interval
        if now and at <= loop.time():
            self._claim(loop)
            return
        self._scheduled = True
        if at > loop.time():
            loop.call_at(at, self._claim, loop)  # the appends of the rest of the interval join too
        else:
            loop.call_soon(self._claim, loop)

    def _claim(self, loop: asyncio.AbstractEventLoop) -> None:
        self._scheduled = False
        cycle, self._next = self._next, None
        if cycle is None:
            return
        self._started = loop.time()
        claims = cycle.claims
        for member in cycle.members:
            try:
                claim = member.claim_sync()
            except OSError as exc:  # no descriptor to sync it through (EMFILE): not known synced
                cycle.errors[member] = exc
                continue
            except Exception as exc:  # a bug: this log's waiters get an error, the others their cycle
                log.exception("claiming a log's sync failed")
                cycle.errors[member] = OSError(errno.EIO, f"claiming the sync failed: {exc!r}")
                continue
            if claim is not None:
                claims.append((member, *claim))
        if claims:
            self._in_flight = True
            self.thread.submit(loop, cycle, self._finish)
        else:
            self._end(cycle, loop)

    def _finish(self, cycle: _Cycle, results: list[OSError | None], seconds: float) -> None:
        """In the loop: what the sync thread made durable is published, and its waiters woken."""
        self._in_flight = False
        self.synced_files += len(cycle.claims)
        for (member, fd, _, goal, token), error in zip(cycle.claims, results, strict=True):
            os.close(fd)
            if error is None:
                try:
                    member.synced(goal, token)
                except OSError as exc:  # its index could not be written: not known published
                    error = exc
                except Exception:  # a bug: its waiters find their bytes synced, or ask again
                    log.exception("publishing a synced log failed")
                    continue
            if error is not None:
                cycle.errors[member] = error
        self._end(cycle, asyncio.get_running_loop())
        if self.on_sync is not None:
            self.on_sync(seconds)

    def _end(self, cycle: _Cycle, loop: asyncio.AbstractEventLoop) -> None:
        self.cycles += 1
        cycle.done.set()
        for then in cycle.then:
            try:
                then()
            except Exception:  # a bug there must not keep the next cycle from starting
                log.exception("a commit cycle's callback failed")
        if self._next is not None and not self._scheduled:
            self._schedule(loop, now=True)


class CycleWrite:
    """An append made durable by a commit cycle (a `Written`): settled once `synced()` holds for
    its log, `member`, which raises once it never will (a new epoch, a closed log); at once
    without `synced` (fsync off).

    `settled` and `then` let a writer answer from the end of the cycle itself, with no task
    waiting; `on_settled` (the store's append hook) runs once, whoever asks first.
    """

    __slots__ = ("_cycle", "_cycles", "_done", "_member", "_on_settled", "_synced", "result")

    def __init__(self, result: AppendResult, cycles: CommitCycle, member: Member,
                 synced: Callable[[], bool] | None, on_settled: Callable[[], None]) -> None:
        self.result, self._cycles, self._member = result, cycles, member
        self._synced, self._on_settled = synced, on_settled
        self._cycle: _Cycle | None = None  # the cycle `then` joined
        self._done = False

    def settled(self) -> AppendResult | None:
        if self._done:
            return self.result
        if self._cycle is not None and self._cycle.done.is_set():
            cycle, self._cycle = self._cycle, None
            cycle.check(self._member)
        if self._synced is not None and not self._synced():
            return None
        self._done = True
        self._on_settled()
        return self.result

    def then(self, callback: Callable[[], None]) -> None:
        if self._synced is None:  # durable when written: no cycle to wait for
            asyncio.get_running_loop().call_soon(callback)
            return
        self._cycle = self._cycles.join(self._member)
        self._cycle.then.append(callback)

    async def durable(self) -> AppendResult:
        while (result := self.settled()) is None:
            await self._cycles.sync(self._member)
        return result
