"""Followers learn of appends made by another process: inotify, and the stat poll it falls back to.

Two in-process gateways on one state dir stand for two processes (each has its own store, so
the one that did not append only learns of it from the file). A poll interval far beyond the
test's length shows that inotify carried an event; a short one, with inotify made unavailable,
shows that the fallback does.
"""

from __future__ import annotations

import contextlib
import errno
import os
import struct
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio
import anyio.lowlevel
import pytest
import websockets

from gateway.store.files import FileStore
from gateway.store.inotify import IN_Q_OVERFLOW, Inotify
from gateway.store.layout import LOG_NAME
from gateway.store.watch import WATCH_LINGER, LogWatcher, mount_fstype, needs_polling
from tests.conftest import RunningGateway
from tests.streamclient import Seen

MOUNTINFO = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
40 22 0:35 / /workspace rw,relatime shared:20 - nfs4 server:/export rw,vers=4.2
41 40 0:36 / /workspace/local rw,relatime - tmpfs tmpfs rw
42 22 0:37 / /mnt/my\\040disk rw - fuse.sshfs host: rw
"""


@pytest.mark.unit
@pytest.mark.parametrize(("path", "fstype", "polls"), [
    ("/", "ext4", False), ("/srv/state", "ext4", False), ("/workspace", "nfs4", True),
    ("/workspace/sessions/s", "nfs4", True), ("/workspace/local/x", "tmpfs", False),
    ("/workspacex", "ext4", False), ("/mnt/my disk/state", "fuse.sshfs", True),
])
def test_network_filesystems_are_polled(path: str, fstype: str, polls: bool) -> None:
    assert mount_fstype(Path(path), MOUNTINFO) == fstype
    assert needs_polling(fstype) is polls


@pytest.mark.unit
def test_a_log_stays_watched_while_its_followers_ride_a_busy_hub(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Followers on a session's hub do not wait on the log while the hub writes to them: a tick
    that finds no waiter keeps the watch (no remove, add and poll per tick, no append of another
    process left unseen until the next tick) until the log has had no waiter for a while."""
    (tmp_path / "events.jsonl").write_bytes(b"")
    flog = SimpleNamespace(dir=tmp_path, path=tmp_path / "events.jsonl", waiters=1)
    store: Any = SimpleNamespace(logs={"s": flog})
    watcher = LogWatcher(store, mode="inotify", interval=1.0)
    clock = [0.0]
    monkeypatch.setattr("gateway.store.watch.anyio.current_time", lambda: clock[0])
    removed: list[int] = []
    monkeypatch.setattr(Inotify, "rm_watch", lambda _self, wd: removed.append(wd))
    with Inotify() as inotify:
        assert watcher._reconcile(inotify, store) == ([flog], [])
        flog.waiters = 0  # the hub is writing to its members
        for clock[0] in (0.1, 1.0, WATCH_LINGER - 0.1):
            assert watcher._reconcile(inotify, store) == ([], [])
        flog.waiters = 1  # it waits again...
        clock[0] = WATCH_LINGER + 1
        watcher._reconcile(inotify, store)
        flog.waiters = 0  # ...and writes for longer than the linger
        assert not removed
        clock[0] = 2 * WATCH_LINGER + 1
        watcher._reconcile(inotify, store)
        assert len(removed) == 2  # the folder's watch and the file's


def _watched_sessions(tmp_path: Path, names: list[str], polled: list[str] | None = None) -> tuple[LogWatcher, Any]:
    """A watcher over fake logs, one folder each with an empty log; `polled` records their polls."""
    logs = {}
    for name in names:
        (tmp_path / name).mkdir()
        (tmp_path / name / LOG_NAME).write_bytes(b"")

        async def poll(name: str = name, *, checked: bool = False) -> None:
            assert polled is not None
            polled.append(name)

        logs[name] = SimpleNamespace(dir=tmp_path / name, path=tmp_path / name / LOG_NAME, waiters=1, session=name,
                                     poll=poll, changed=lambda: True)
    store: Any = SimpleNamespace(logs=logs)
    return LogWatcher(store, mode="inotify", interval=1.0), store


@pytest.mark.unit
@pytest.mark.anyio
async def test_events_make_their_sessions_pending_once_per_wake_up(tmp_path: Path) -> None:
    """Many appends to a log between two wake-ups make one poll of it; another file in its folder
    makes none; a replaced log is watched afresh, so its growth still wakes."""
    watcher, store = _watched_sessions(tmp_path, ["a", "b"])
    with Inotify() as inotify:
        assert len(watcher._reconcile(inotify, store)[0]) == 2
        for _ in range(5):
            with (tmp_path / "a" / LOG_NAME).open("ab") as f:
                f.write(b"{}\n")
        (tmp_path / "b" / "other.json").write_bytes(b"{}")
        watcher._take_events(inotify)
        assert watcher._pending == {"a"}
        assert watcher._wake.is_set()

        watcher._pending.clear()
        replacement = tmp_path / "b" / "new.jsonl"
        replacement.write_bytes(b"")
        replacement.replace(tmp_path / "b" / LOG_NAME)
        watcher._take_events(inotify)
        assert watcher._pending == {"b"}
        watcher._pending.clear()
        with (tmp_path / "b" / LOG_NAME).open("ab") as f:
            f.write(b"{}\n")
        watcher._take_events(inotify)
        assert watcher._pending == {"b"}
        assert len(watcher._by_wd) == 4  # the replaced file's watch went with it (IN_IGNORED)


@pytest.mark.unit
@pytest.mark.anyio
async def test_our_own_appends_wake_no_poll_and_another_writers_do(tmp_path: Path) -> None:
    """Every append we make wakes the watch of its log; the reader's stat finds it taken in
    already, so neither the delivering task nor a poll runs for it. Another store on the same
    folder stands for another process: its append makes the session pending."""
    ours = FileStore(tmp_path, fsync=True, max_event_bytes=1 << 20)
    ours.ensure_root()
    flog = await ours.open("p", "s", create=True)
    await flog.append([b'{"type":"x"}'])
    other = await FileStore(tmp_path, fsync=True, max_event_bytes=1 << 20).open("p", "s", create=False)
    watcher = LogWatcher(ours, mode="inotify", interval=1.0)
    with Inotify() as inotify:
        async with anyio.create_task_group() as tg:
            tg.start_soon(flog.wait_change, flog.version)  # a follower: the log is watched
            await anyio.lowlevel.checkpoint()
            assert watcher._reconcile(inotify, ours)[0] == [flog]
            for n in range(5):
                await flog.append([b'{"type":"x","n":%d}' % n])
                watcher._take_events(inotify)
                assert watcher._pending == set()
                assert not watcher._wake.is_set()
            await other.append([b'{"type":"x","by":"other"}'])
            stats = 0
            real_stat = flog._files.stat

            def counted() -> os.stat_result | None:
                nonlocal stats
                stats += 1
                return real_stat()

            flog._files.stat = counted  # type: ignore[method-assign]
            watcher._take_events(inotify)
            assert watcher._pending == {"s"}
            assert watcher._wake.is_set()
            tg.start_soon(watcher._deliver)
            with anyio.fail_after(10):
                while flog.lines < 7:
                    await anyio.sleep(0.001)
            assert stats == 2  # the reader's check, then the poll's under the lock
            tg.cancel_scope.cancel()


@pytest.mark.unit
@pytest.mark.anyio
async def test_a_log_the_reader_cannot_stat_is_left_to_its_poll(tmp_path: Path) -> None:
    """The reader's stat failing (a permission changed under it) must not lose the wake-up of
    this log or of the others: the poll, in the delivering task, reports the error."""
    watcher, store = _watched_sessions(tmp_path, ["a", "b"])

    def refused() -> bool:
        raise PermissionError(13, "Permission denied")

    store.logs["a"].changed = refused
    with Inotify() as inotify:
        watcher._reconcile(inotify, store)
        for name in ("a", "b"):
            with (tmp_path / name / LOG_NAME).open("ab") as f:
                f.write(b"{}\n")
        watcher._take_events(inotify)
        assert watcher._pending == {"a", "b"}
        assert watcher._wake.is_set()


@pytest.mark.unit
@pytest.mark.anyio
async def test_a_queue_overflow_polls_every_watched_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    """When the kernel's event queue overflows, events were lost: every watched log is polled,
    and watched afresh (a log created meanwhile gets its watch). The overflow is a synthetic
    kernel message (wd -1, IN_Q_OVERFLOW, no name) fed to the loop reader, since overflowing the
    real queue takes 16,384 unread events."""
    polled: list[str] = []
    watcher, store = _watched_sessions(tmp_path, ["a", "b", "c"], polled)
    (tmp_path / "c" / LOG_NAME).unlink()
    overflow = struct.pack("iIII", -1, IN_Q_OVERFLOW, 0, 0)
    with Inotify() as inotify:
        watcher._reconcile(inotify, store)
        (tmp_path / "c" / LOG_NAME).write_bytes(b"")
        inotify.read()  # the folder's CREATE: lost in the overflow
        async with anyio.create_task_group() as tg:
            tg.start_soon(watcher._deliver)
            for n in range(1, 3):
                with monkeypatch.context() as patch:
                    patch.setattr(inotify, "read", lambda: overflow)  # one read: it leaves room for more
                    watcher._take_events(inotify)
                with anyio.fail_after(5):
                    while len(polled) < 3 * n:
                        await anyio.sleep(0.001)
                assert sorted(polled[-3:]) == ["a", "b", "c"]
            with (tmp_path / "c" / LOG_NAME).open("ab") as f:
                f.write(b"{}\n")
            watcher._take_events(inotify)
            assert watcher._pending == {"c"}
            tg.cancel_scope.cancel()
    assert [r.message for r in caplog.records if "overflow" in r.message] == [
        "inotify event queue overflowed; polling every watched log (raise fs.inotify.max_queued_events if this recurs)"
    ]  # once, however often it overflows


@pytest.mark.unit
@pytest.mark.anyio
async def test_an_append_by_another_process_is_taken_in_from_the_page_cache(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """What another writer appended is read and classified from the page cache on the event loop:
    the wake-up per append of another worker costs no worker-thread hop (it cost two)."""
    writer = FileStore(tmp_path, fsync=False, max_event_bytes=1 << 20)
    writer.ensure_root()
    wlog = await writer.open("p", "s", create=True)
    await wlog.append([b'{"type":"x"}'])
    rlog = await FileStore(tmp_path, fsync=False, max_event_bytes=1 << 20).open("p", "s", create=False)
    hops: list[object] = []
    real = anyio.to_thread.run_sync

    async def counted(fn: Any, *args: Any, **kwargs: Any) -> Any:
        hops.append(fn)
        return await real(fn, *args, **kwargs)

    monkeypatch.setattr(anyio.to_thread, "run_sync", counted)
    for n in range(1, 11):
        await wlog.append([b'{"type":"x","n":%d}' % n] * 3)
        await rlog.poll()
        assert rlog.lines == 1 + 3 * n
    rh = rlog._files.rh
    if rh is None or not rh.nowait:
        pytest.skip("this filesystem cannot read from the page cache without blocking (no RWF_NOWAIT)")
    assert hops == []


@contextlib.asynccontextmanager
async def _pair(factory: Callable[..., contextlib.AbstractAsyncContextManager[RunningGateway]], tmp_path: Path,
                **follower: Any) -> AsyncIterator[tuple[RunningGateway, RunningGateway]]:
    state = tmp_path / "state"
    async with factory(state_dir=state, watch="poll", poll_interval=600) as writer, \
            factory(state_dir=state, **follower) as reader:
        yield writer, reader


async def _follow_appends(writer: RunningGateway, reader: RunningGateway, count: int) -> Seen:
    """Follow on `reader` while `count` events are appended through `writer`, one at a time."""
    await writer.append("s", [{"type": "X", "n": -1}])
    seen = Seen()
    async with websockets.connect(reader.events_url("s", ws=True), compression=None) as ws:
        with anyio.fail_after(30):
            while not seen.control("live"):
                seen.take_frame(await ws.recv())
            for n in range(count):
                await writer.append("s", [{"type": "X", "n": n}])
                while seen.events[-1]["n"] != n:
                    seen.take_frame(await ws.recv())
            await writer.http.delete(writer.events_url("s"))  # the log goes: followers get a reset
            await writer.append("s", [{"type": "X", "n": "after-reset"}])
            while seen.events[-1]["n"] != "after-reset":
                seen.take_frame(await ws.recv())
    return seen


def _check(seen: Seen, count: int) -> None:
    assert [e["n"] for e in seen.events] == [-1, *range(count), "after-reset"]
    assert len(seen.control("reset")) == 1


@pytest.mark.server
@pytest.mark.anyio
async def test_inotify_wakes_followers_of_another_process(
        gateway_factory: Callable[..., contextlib.AbstractAsyncContextManager[RunningGateway]], tmp_path: Path) -> None:
    async with _pair(gateway_factory, tmp_path, watch="inotify", poll_interval=600) as (writer, reader):
        seen = await _follow_appends(writer, reader, 30)
        assert reader.gateway.watcher.using == "inotify"
    _check(seen, 30)


@pytest.mark.server
@pytest.mark.anyio
@pytest.mark.parametrize("fallback", ["forced", "no-inotify", "network-fs", "watch-limit"])
async def test_polling_takes_over_where_inotify_cannot(
        gateway_factory: Callable[..., contextlib.AbstractAsyncContextManager[RunningGateway]], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, fallback: str) -> None:
    def refuse(*_args: Any, **_kw: Any) -> Any:
        raise OSError(errno.ENOSPC if fallback == "watch-limit" else errno.EMFILE, "refused for the test")

    mode, using = "auto", "poll"
    if fallback == "forced":
        mode = "poll"
    elif fallback == "no-inotify":
        monkeypatch.setattr("gateway.store.watch.Inotify", refuse)
    elif fallback == "network-fs":
        monkeypatch.setattr("gateway.store.watch.mount_fstype", lambda _path, _info: "nfs4")
    else:
        monkeypatch.setattr(Inotify, "add_watch", refuse)
        using = "inotify"
    async with _pair(gateway_factory, tmp_path, watch=mode, poll_interval=0.05) as (writer, reader):
        seen = await _follow_appends(writer, reader, 10)
        assert reader.gateway.watcher.using == using
    _check(seen, 10)
