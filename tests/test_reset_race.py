"""Appends racing resets (DELETE, a log replaced behind the gateway's back) and readers.

Every append must get a definite answer (acknowledged, or `SessionReset`), the event loop must
never stop turning, every acknowledged event must be in the file of the epoch it was acknowledged
in, and no reader may ever see a partial line. Randomized with printed seeds (the test id names
the seed; `GATEWAY_TEST_SEEDS=7,8` runs others), under both fsync settings.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import httpx
import orjson
import pytest

from gateway.store.base import SessionReset
from gateway.store.filelog import FileLog
from gateway.store.files import FileStore
from gateway.stream.framing import Batch, Reset, Skipped
from gateway.stream.reader import LogReader
from tests.conftest import TLS, spawn_gateway
from tests.loopwatch import loop_watch

pytestmark = pytest.mark.anyio

SEEDS = [int(s) for s in os.environ.get("GATEWAY_TEST_SEEDS", "").split(",") if s] or [1, 2, 3, 4, 5, 6]


class Files:
    """Every incarnation of the log, kept reachable by a hard link before it is unlinked or replaced."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.by_epoch: dict[str, list[Path]] = {}
        self._n = itertools.count()

    def keep(self, path: Path, epoch: str) -> None:
        aside = self.root / f"kept-{next(self._n)}"
        try:
            os.link(path, aside)
        except FileNotFoundError:
            return
        self.by_epoch.setdefault(epoch, []).append(aside)

    def ids_at(self, epoch: str, current: FileLog) -> list[list[int]]:
        """The ids in each file known for `epoch`, by line (the live file last)."""
        paths = list(self.by_epoch.get(epoch, []))
        if epoch == current.epoch and current.path.exists():
            paths.append(current.path)
        return [[orjson.loads(line)["id"] for line in p.read_bytes().splitlines()] for p in paths]


def keep_on_unlink(flog: FileLog, files: Files) -> None:
    """Make the store's own unlink (DELETE) keep the file for the checks: a hard link first."""
    base = type(flog.path)

    class KeptPath(base):  # type: ignore[valid-type, misc]
        def unlink(self, missing_ok: bool = False) -> None:
            files.keep(self, flog.epoch)
            super().unlink(missing_ok)

    flog.path = KeptPath(flog.path)


async def open_kept_log(tmp_path: Path, fsync: bool) -> tuple[FileStore, FileLog, Files]:
    """A new session's log whose every incarnation stays readable for the checks."""
    store = FileStore(tmp_path / "state", fsync=fsync, max_event_bytes=1 << 20)
    store.ensure_root()
    flog = await store.open("p", "s", create=True)
    files = Files(tmp_path)
    keep_on_unlink(flog, files)
    return store, flog, files


class Follower:
    """Reads the log from the start and follows it; checks each batch is whole JSON, in seq order."""

    def __init__(self, flog: FileLog) -> None:
        self.reader = LogReader(flog, chunk_bytes=4096)
        self.events = 0

    async def run(self) -> None:
        await self.reader.seek()
        expected = 1
        while True:
            items = await self.reader.read(8192)
            if not items:
                await self.reader.wait()
                continue
            for item in items:
                if isinstance(item, Reset):
                    expected = 1
                    continue
                assert not isinstance(item, Skipped), "the gateway appended a line it cannot deliver"
                assert isinstance(item, Batch) and item.first == expected, (item, expected)
                lines = item.data.split(b"\n")
                assert len(lines) == item.last - item.first + 1
                for line in lines:
                    event = orjson.loads(line)  # a partial line would not parse
                    assert isinstance(event, dict) and isinstance(event["id"], int)
                self.events += len(lines)
                expected = item.last + 1


@pytest.mark.unit
@pytest.mark.parametrize("fsync", [True, False], ids=["fsync-always", "fsync-never"])
@pytest.mark.parametrize("seed", SEEDS, ids=[f"seed-{s}" for s in SEEDS])
async def test_appends_resets_and_readers_interleaved(tmp_path: Path, seed: int, fsync: bool) -> None:
    rng = random.Random(seed)
    store, flog, files = await open_kept_log(tmp_path, fsync)
    ids = itertools.count(1)
    foreign_ids = itertools.count(-1, -1)
    resets = 0

    async def append(acked: list[tuple[str, int, list[int]]], refused: list[list[int]]) -> None:
        batch = [next(ids) for _ in range(rng.choice([1, 1, 2, 5]))]
        try:
            result = await flog.append([orjson.dumps({"type": "X", "id": i}) for i in batch])
        except SessionReset:
            refused.append(batch)
            return
        acked.append((result.epoch, result.first, batch))

    async def delete() -> None:
        nonlocal resets
        resets += 1
        await flog.delete()

    async def replace() -> None:
        """Another process swaps in a new file (possibly empty); the gateway notices on its own."""
        nonlocal resets
        resets += 1
        files.keep(flog.path, flog.epoch)
        new = tmp_path / "replacement"
        new.write_bytes(b"".join(orjson.dumps({"type": "F", "id": next(foreign_ids)}) + b"\n"
                                 for _ in range(rng.randint(0, 3))))
        os.replace(new, flog.path)

    async def read_once() -> None:
        follower = Follower(flog)
        with anyio.move_on_after(0.05):
            await follower.run()

    ops = {"append": append, "delete": delete, "replace": replace, "read": read_once}
    try:
        async with loop_watch() as watch, anyio.create_task_group() as followers:
            live = [Follower(flog) for _ in range(3)]
            for follower in live:
                followers.start_soon(follower.run)
            for step in range(60):
                acked: list[tuple[str, int, list[int]]] = []
                refused: list[list[int]] = []
                names = rng.choices(list(ops), weights=[10, 1, 1, 2], k=rng.randint(2, 12))
                with anyio.fail_after(15):  # the store answers every call
                    async with anyio.create_task_group() as tg:
                        for name in names:
                            if name == "append":
                                tg.start_soon(append, acked, refused)
                            else:
                                tg.start_soon(ops[name])
                            if rng.random() < 0.3:
                                await anyio.lowlevel.checkpoint()
                    await flog.poll()
                for epoch, first, batch in acked:
                    held = files.ids_at(epoch, flog)
                    assert any(f[first - 1 : first - 1 + len(batch)] == batch for f in held), (
                        f"seed {seed} step {step}: acknowledged {batch} at {epoch}-{first} is not in that epoch's log"
                    )
                current = set(itertools.chain.from_iterable(files.ids_at(flog.epoch, flog)))
                for batch in refused:
                    assert not current & set(batch), f"seed {seed} step {step}: refused {batch} is in the log"
            followers.cancel_scope.cancel()
        assert watch.max_lag < 1.0, f"seed {seed}: the event loop was blocked for {watch.max_lag:.2f}s"
        assert resets > 0 and all(f.events > 0 for f in live)
    finally:
        store.close()


FROZEN = 3.0
"""Seconds without an answer that count as frozen (the defect made it forever)."""


def _probe_healthz(base: str, stop: threading.Event, worst: list[float]) -> None:
    """From a thread of its own, so the test's loop cannot delay it: /healthz latency, worst case."""
    with httpx.Client(verify=TLS, timeout=5) as http:
        while not stop.wait(0.05):
            started = time.monotonic()
            with contextlib.suppress(httpx.TransportError):
                http.get(f"{base}/healthz")
            worst[0] = max(worst[0], time.monotonic() - started)


@pytest.mark.server
async def test_deletes_racing_appends_over_http_keep_the_gateway_answering(tmp_path: Path) -> None:
    """The reported loop: 8 appends and 1 DELETE of one session at once, round after round,
    with fsync on. Each request has its own connection, as separate curl processes would."""
    state = tmp_path / "state"
    async with spawn_gateway(state, GATEWAY_FSYNC="always", GATEWAY_SHUTDOWN_GRACE="5") as gw:
        url = gw.events_url("h")
        worst = [0.0]
        stop = threading.Event()
        probe = threading.Thread(target=_probe_healthz, args=(gw.base, stop, worst), daemon=True)
        probe.start()
        statuses: dict[int, int] = {}

        async def request(method: str, **kw: Any) -> None:
            async with httpx.AsyncClient(verify=TLS, timeout=10) as http:
                resp = await http.request(method, url, **kw)
            statuses[resp.status_code] = statuses.get(resp.status_code, 0) + 1
            if resp.status_code == 409:
                assert resp.json()["error"]["code"] == "session_reset", resp.text

        try:
            for _ in range(100):
                async with anyio.create_task_group() as tg:
                    for _ in range(8):
                        tg.start_soon(lambda: request("POST", json={"type": "x"}))
                    tg.start_soon(lambda: request("DELETE"))
        finally:
            stop.set()
            probe.join()
        assert set(statuses) <= {200, 201, 404, 409}, statuses
        assert statuses.get(201, 0) > 0
        started = time.monotonic()
        async with httpx.AsyncClient(verify=TLS, timeout=5) as http:
            assert (await http.get(f"{gw.base}/healthz")).status_code == 200
        # The freeze never answered again; the bound leaves room for a loaded 2-core machine's fsyncs.
        assert time.monotonic() - started < FROZEN
        assert worst[0] < FROZEN, f"/healthz took {worst[0]:.2f}s during the race"
        gw.proc.send_signal(signal.SIGTERM)
        try:
            assert gw.proc.wait(timeout=5 + 5) == 0, gw.log_path.read_text()
        except subprocess.TimeoutExpired:
            pytest.fail("SIGTERM did not end the gateway within its shutdown grace")
