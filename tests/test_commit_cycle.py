"""The store's commit cycle: appends of many sessions share their syncs, and none is published
(acknowledged, shown to readers) before a sync that covers it returned.

The sync call is a test double here (`Recording`): the kernel gives no way to observe from a
test which bytes a real fsync or syncfs made durable, so the double records, per file, the size
it had when the "sync" ran, and the tests hold every publication against that record. Everything
else is real: the store, its files and its descriptors.
"""

from __future__ import annotations

import errno
import os
import random
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest

from gateway.store.base import StoreError
from gateway.store.commit import CommitCycle, fsync_each, sync_files
from gateway.store.filelog import FileLog
from gateway.store.files import FileStore

pytestmark = [pytest.mark.anyio, pytest.mark.unit]


class Recording:
    """A sync double: remembers each file's size at its sync; fails the files of `failing` paths."""

    def __init__(self) -> None:
        self.durable: dict[str, int] = {}
        self.calls: list[int] = []  # files per call
        self.times: list[float] = []  # when each call began (time.monotonic)
        self.failing: set[str] = set()

    def __call__(self, files: Sequence[tuple[int, int]]) -> list[OSError | None]:
        self.calls.append(len(files))
        self.times.append(time.monotonic())
        results: list[OSError | None] = []
        for fd, _ in files:
            path = os.readlink(f"/proc/self/fd/{fd}")
            if path in self.failing:
                results.append(OSError(errno.EIO, "Input/output error"))
                continue
            self.durable[path] = os.fstat(fd).st_size
            results.append(None)
        return results


def _store(tmp_path: Path, sync: Recording) -> FileStore:
    store = FileStore(tmp_path, fsync=True, max_event_bytes=1 << 20, commits=CommitCycle(sync))
    store.ensure_root()
    return store


def _line(session: int, n: int) -> bytes:
    return b'{"type":"CUSTOM","name":"tick","value":{"s":%d,"n":%d}}' % (session, n)


def _published_is_durable(logs: Sequence[FileLog], sync: Recording) -> None:
    for flog in logs:
        assert flog.end <= sync.durable.get(str(flog.path), 0), f"{flog.session}: published past its last sync"


async def test_appends_of_many_sessions_in_one_loop_turn_share_one_cycle(tmp_path: Path) -> None:
    sync = Recording()
    store = _store(tmp_path, sync)
    logs = [await store.open("p", f"s{i}", create=True) for i in range(50)]
    async with anyio.create_task_group() as tg:
        for i, flog in enumerate(logs):
            tg.start_soon(flog.append, [_line(i, 0)])
    assert store.commits.cycles == 1
    assert sync.calls == [50]
    assert [flog.lines for flog in logs] == [1] * 50
    _published_is_durable(logs, sync)


async def test_appends_of_one_session_in_one_turn_sync_its_file_once(tmp_path: Path) -> None:
    sync = Recording()
    store = _store(tmp_path, sync)
    flog = await store.open("p", "s", create=True)
    async with anyio.create_task_group() as tg:
        for n in range(20):
            tg.start_soon(flog.append, [_line(0, n)])
    assert sync.calls == [1]
    assert flog.lines == 20


async def test_appends_of_one_interval_share_the_cycle_after_the_first(tmp_path: Path) -> None:
    """The first append finds the store idle and syncs at once; the appends of 30 later loop
    turns, all within the interval, share one more cycle, which starts no sooner than an interval
    after the first (the interval is long, so the turns fit in it on any machine)."""
    sync = Recording()
    interval = 0.5
    store = FileStore(tmp_path, fsync=True, max_event_bytes=1 << 20, commits=CommitCycle(sync, interval=interval))
    store.ensure_root()
    logs = [await store.open("p", f"s{i}", create=True) for i in range(30)]
    async with anyio.create_task_group() as tg:
        for i, flog in enumerate(logs):
            tg.start_soon(flog.append, [_line(i, 0)])
            await anyio.lowlevel.checkpoint()
    assert sync.calls == [1, 29]
    assert sync.times[1] - sync.times[0] > interval / 2  # (less the first call's thread start-up)
    _published_is_durable(logs, sync)


async def test_random_concurrent_appends_are_never_published_before_their_sync(tmp_path: Path) -> None:
    sync = Recording()
    store = _store(tmp_path, sync)
    rng = random.Random(20)
    logs = [await store.open("p", f"s{i}", create=True) for i in range(12)]
    acked: list[list[int]] = [[] for _ in logs]

    async def writer(i: int, flog: FileLog) -> None:
        for n in range(40):
            if rng.random() < 0.3:
                await anyio.lowlevel.checkpoint()
            result = await flog.append([_line(i, n)])
            assert result.first == result.last == n + 1
            assert flog.end <= sync.durable[str(flog.path)], "acknowledged before its bytes were synced"
            acked[i].append(n)

    async def watcher() -> None:
        while any(len(a) < 40 for a in acked):
            _published_is_durable(logs, sync)
            await anyio.lowlevel.checkpoint()

    async with anyio.create_task_group() as tg:
        tg.start_soon(watcher)
        for i, flog in enumerate(logs):
            tg.start_soon(writer, i, flog)
    assert all(a == list(range(40)) for a in acked)
    assert store.commits.cycles < 12 * 40, "cycles were shared"
    for i, flog in enumerate(logs):
        assert flog.path.read_bytes() == b"".join(_line(i, n) + b"\n" for n in range(40))


async def test_a_session_whose_sync_fails_does_not_stall_the_others(tmp_path: Path) -> None:
    sync = Recording()
    store = _store(tmp_path, sync)
    logs = [await store.open("p", f"s{i}", create=True) for i in range(5)]
    sync.failing.add(str(logs[2].path))
    outcomes: dict[int, str] = {}

    async def writer(i: int, flog: FileLog) -> None:
        try:
            for n in range(10):
                await flog.append([_line(i, n)])
            outcomes[i] = "ok"
        except StoreError as exc:
            outcomes[i] = str(exc)

    async with anyio.create_task_group() as tg:
        for i, flog in enumerate(logs):
            tg.start_soon(writer, i, flog)
    assert {i: o for i, o in outcomes.items() if i != 2} == dict.fromkeys((0, 1, 3, 4), "ok")
    assert outcomes[2].startswith("fsync failed: Input/output error")
    assert logs[2].lines == 0, "nothing unsynced is shown to readers"
    assert [flog.lines for i, flog in enumerate(logs) if i != 2] == [10] * 4
    sync.failing.clear()  # the disk recovers: the session appends again, after what it wrote
    result = await logs[2].append([_line(2, 99)])
    assert (result.first, result.last) == (2, 2)


async def test_cancelled_appends_do_not_strand_the_cycle(tmp_path: Path) -> None:
    """The cycle's runner and a waiter of the next cycle are both cancelled while a sync is in
    flight: the cycle still ends, and the next append of either session completes."""
    entered, gate = threading.Event(), threading.Event()

    class Gated(Recording):
        def __call__(self, files: Sequence[tuple[int, int]]) -> list[OSError | None]:
            entered.set()
            gate.wait(10)
            return super().__call__(files)

    sync = Gated()
    store = _store(tmp_path, sync)
    a, b = [await store.open("p", name, create=True) for name in ("a", "b")]
    leader, waiter = anyio.CancelScope(), anyio.CancelScope()

    async def append(scope: anyio.CancelScope, flog: FileLog) -> None:
        with scope:
            await flog.append([_line(0, 0)])

    async with anyio.create_task_group() as tg:
        tg.start_soon(append, leader, a)
        await anyio.to_thread.run_sync(entered.wait, 10)  # a's cycle is syncing
        tg.start_soon(append, waiter, b)  # b waits for the next cycle
        for _ in range(5):
            await anyio.lowlevel.checkpoint()
        leader.cancel()
        waiter.cancel()
        gate.set()
    with anyio.fail_after(10):
        await a.append([_line(0, 1)])
        await b.append([_line(1, 1)])
    assert (a.lines, b.lines) == (2, 2)  # a cancelled append that was written is kept, in order
    _published_is_durable([a, b], sync)


def test_real_syncs_answer_per_file(tmp_path: Path) -> None:
    paths = [tmp_path / f"f{i}" for i in range(3)]
    fds = [os.open(p, os.O_WRONLY | os.O_CREAT | os.O_APPEND) for p in paths]
    try:
        for fd in fds:
            os.write(fd, b"x\n")
        files = [(fd, os.fstat(fd).st_dev) for fd in fds]
        assert sync_files(files) == [None, None, None]
        assert fsync_each(files[:1]) == [None]
        reader = os.open(paths[0], os.O_RDONLY)
        os.close(reader)
        bad = fsync_each([(reader, files[0][1])])  # a closed descriptor: its own error, no exception
        assert isinstance(bad[0], OSError) and bad[0].errno == errno.EBADF
    finally:
        for fd in fds:
            os.close(fd)


async def test_a_log_that_cannot_be_claimed_fails_its_waiters_and_the_cycles_go_on() -> None:
    """A descriptor that cannot be duplicated (EMFILE) fails the appends of its cycle with a clear
    error instead of acknowledging them, and the next cycle runs as usual."""

    class Member:
        def __init__(self, claim_error: Exception | None) -> None:
            self.claim_error = claim_error
            self.synced_to = 0

        def claim_sync(self) -> tuple[int, int, int, object] | None:
            if self.claim_error is not None:
                raise self.claim_error
            return os.dup(0), 0, 1, None

        def synced(self, goal: int, token: object) -> None:
            self.synced_to = goal

    sync = Recording()
    commits = CommitCycle(sync)
    broken, fine = Member(OSError(errno.EMFILE, "Too many open files")), Member(None)
    with pytest.raises(StoreError, match="fsync failed: Too many open files"):
        await commits.sync(broken)
    await commits.sync(fine)
    assert fine.synced_to == 1
    assert commits.cycles == 2
    buggy = Member(ValueError("a bug"))  # not an OSError: still an answer, not a hang
    async with anyio.create_task_group() as tg:
        tg.start_soon(commits.sync, fine)
        with pytest.raises(StoreError, match="claiming the sync failed"):
            await commits.sync(buggy)
    assert commits.cycles == 3


async def test_the_sync_thread_ends_when_idle_and_the_next_cycle_starts_another(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("gateway.store.commit.IDLE_SECONDS", 0.05)
    sync = Recording()
    store = _store(tmp_path, sync)
    flog = await store.open("p", "s", create=True)
    await flog.append([_line(0, 0)])
    with anyio.fail_after(10):
        while store.commits.thread.alive:
            await anyio.sleep(0.02)
    await flog.append([_line(0, 1)])
    assert sync.calls == [1, 1] and flog.lines == 2
    _published_is_durable([flog], sync)


async def test_then_callbacks_run_at_the_cycles_end_in_order(tmp_path: Path) -> None:
    """`then` callbacks of appends written by `write_now` run at the end of the one cycle that
    syncs them all, in order, past one that raises, with `settled` then holding the result; the
    store's append hook runs once."""
    sync = Recording()
    store = _store(tmp_path, sync)
    hooked: list[int] = []
    store.on_append = lambda _log, lines, _s: hooked.append(len(lines))
    logs = [await store.open("p", f"s{i}", create=True) for i in range(3)]
    for flog in logs:
        await flog.append([_line(0, 0)])  # the write descriptor is open: write_now can take the next
    hooked.clear()
    written = [flog.write_now([_line(i, 1), _line(i, 2)]) for i, flog in enumerate(logs)]
    assert all(w is not None and w.settled() is None for w in written)  # nothing synced yet
    order: list[int] = []

    def boom() -> None:
        raise RuntimeError("a callback's bug")

    cycles = store.commits.cycles
    for i, w in enumerate(written):
        assert w is not None
        w.then(lambda i=i: order.append(i))  # type: ignore[misc]
        if i == 0:
            w.then(boom)
    with anyio.fail_after(10):  # bounds a stuck test, not a timing check
        while not order:
            await anyio.sleep(0.001)
    assert store.commits.cycles == cycles + 1 and sync.calls[-1] == 3  # one cycle for the three
    assert order == [0, 1, 2]
    assert [w.settled().last for w in written if w is not None] == [3, 3, 3]  # type: ignore[union-attr]
    assert [w.settled() for w in written if w is not None] == [w.result for w in written if w is not None]
    assert hooked == [2, 2, 2]  # once each, however often `settled` is asked
    assert not any(flog.writing() for flog in logs)
    _published_is_durable(logs, sync)
