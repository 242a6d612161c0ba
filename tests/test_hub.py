"""The shared path (gateway.stream.hub): followers join a session's hub at the live edge and leave
it when their transport cannot take a frame at once, under concurrent appends and resets, for
WebSocket, SSE and NDJSON followers of one hub alike.

No gap and no duplicate at either hand-over: every follower's frames, own and shared alike, must
be the log seq after seq within an epoch, start again at 1 after each reset, and end at the log's
end. Randomized with printed seeds (`GATEWAY_TEST_SEEDS=7,8` runs others).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import random
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import anyio
import anyio.lowlevel
import httpx
import orjson
import pytest
import websockets

from gateway.store.base import SessionReset
from gateway.store.cursor import Cursor
from gateway.store.files import FileLog
from gateway.stream.framing import Batch, Item, NdjsonEncoder, Reset, SseEncoder, WebSocketEncoder
from gateway.stream.hub import BuildFrame, Decision, Hubs, decide
from gateway.stream.pump import Heartbeats, PumpStats, pump
from gateway.stream.reader import LogReader, Mark
from tests.conftest import TLS, run_gateway
from tests.stalled import stalled_client, stalled_http_client
from tests.streamclient import Seen
from tests.test_reset_race import SEEDS, Files, open_kept_log


@pytest.mark.unit
def test_decide_joins_only_at_the_hubs_exact_position() -> None:
    assert decide(Mark("e1", 5, 10), Mark("e1", 5, 10)) is Decision.JOIN
    assert decide(Mark("e1", 4, 8), Mark("e1", 5, 10)) is Decision.WAIT_HUB  # the hub has more to publish
    assert decide(Mark("e0", 9, 30), Mark("e1", 1, 0)) is Decision.WAIT_HUB  # the hub has a reset to publish
    assert decide(Mark("e1", 6, 12), Mark("e1", 5, 10)) is Decision.READ


ENCODERS = {"websocket": WebSocketEncoder(), "sse": SseEncoder(), "ndjson": NdjsonEncoder()}


def frame_records(kind: str, frame: bytes) -> list[tuple[str, int, int | None]]:
    """A frame of any transport as (epoch, seq, event id) per event and (new epoch, 0, None) per reset."""
    out: list[tuple[str, int, int | None]] = []
    if kind == "sse":
        for block in frame.split(b"\n\n")[:-1]:
            if block.startswith(b": reset epoch="):
                out.append((block[14:].decode(), 0, None))
            elif not block.startswith(b":"):
                head, data = block.split(b"\n")
                epoch, seq = head.removeprefix(b"id: ").decode().rsplit("-", 1)
                out.append((epoch, int(seq), orjson.loads(data.removeprefix(b"data: "))["id"]))
            else:
                assert block in (b": live", b": heartbeat"), block
        return out
    for line in frame.split(b"\n"):
        if not line:
            continue
        obj = orjson.loads(line)
        if "reset" in obj or obj.get("control") == "reset":
            out.append((obj["reset"]["epoch"] if "reset" in obj else obj["epoch"], 0, None))
        elif "event" in obj:
            epoch, seq = obj["cursor"].rsplit("-", 1)
            assert int(seq) == obj["seq"], obj
            out.append((epoch, obj["seq"], obj["event"]["id"]))
        elif "events" in obj:
            epoch = obj["cursor"].rsplit("-", 1)[0]
            assert obj["cursor"] == f"{epoch}-{obj['last']}" and obj["last"] - obj["first"] + 1 == len(obj["events"])
            out += [(epoch, obj["first"] + i, e["id"]) for i, e in enumerate(obj["events"])]
        else:
            assert obj.get("control") in ("live", "heartbeat") or "heartbeat" in obj, obj
    return out


class Follower:
    """A pump on the shared path whose transport (WebSocket, SSE or NDJSON) refuses a shared frame
    at random (above its high-water mark), recording every frame it takes, own or shared, in order."""

    def __init__(self, hubs: Hubs, flog: FileLog, rng: random.Random, refuse: float, kind: str) -> None:
        self.reader = LogReader(flog, chunk_bytes=rng.choice([256, 4096, 1 << 16]))
        self.rng, self.refuse, self.kind = rng, refuse, kind
        self.encoder = ENCODERS[kind]
        self.frames: list[tuple[str, bytes]] = []
        self.stats = PumpStats()
        self.member = hubs.member(self.reader, kind, self.encoder.items, self.write, self.stats)
        self.start = 1
        self.start_epoch = ""
        self.scope = anyio.CancelScope()  # cancelled: the client is gone
        self.quit_on_hub = False

    def write(self, frame: bytes) -> bool:
        if self.rng.random() < self.refuse:
            return False
        self.frames.append(("shared", frame))
        return True

    async def send(self, frame: bytes) -> None:
        if self.rng.random() < 0.3:
            await anyio.lowlevel.checkpoint()  # a send that waits for the client now and then
        self.frames.append(("own", frame))

    async def run(self, after: Cursor | None) -> None:
        with self.scope:
            await self.reader.seek(after)
            self.start, self.start_epoch = self.reader.seq, self.reader.epoch
            await pump(self.reader, self.encoder, self.send, follow=True,
                       frame_bytes=self.rng.choice([200, 2000]), heartbeats=Heartbeats(3600), stats=self.stats,
                       shared=self.member)

    def walk(self, label: str, files: Files | None = None, flog: FileLog | None = None) -> tuple[str, int]:
        """Check seq after seq per epoch (and, given the files, each frame's run of events against the
        log's lines at their seqs); returns where the follower stands: (epoch, next seq)."""
        epoch, expected = self.start_epoch, self.start
        for _, frame in self.frames:
            run: list[int | None] = []
            for rec_epoch, seq, event_id in frame_records(self.kind, frame):
                if event_id is None:
                    self._check_run(label, epoch, expected - len(run), run, files, flog)
                    epoch, expected, run = rec_epoch, 1, []
                    continue
                assert seq == expected, f"{label} ({self.kind}): {'gap' if seq > expected else 'duplicate'} " \
                                        f"at {epoch}: expected {expected}, got {seq}"
                assert rec_epoch == epoch, (label, rec_epoch, epoch)
                run.append(event_id)
                expected += 1
            self._check_run(label, epoch, expected - len(run), run, files, flog)
        return epoch, expected

    @staticmethod
    def _check_run(label: str, epoch: str, first: int, ids: list[int | None], files: Files | None,
                   flog: FileLog | None) -> None:
        if ids and files is not None and flog is not None:
            assert any(f[first - 1 : first - 1 + len(ids)] == ids for f in files.ids_at(epoch, flog)), (
                label, epoch, first, ids)

    def count(self, path: str) -> int:
        return sum(1 for p, _ in self.frames if p == path)


@pytest.mark.unit
@pytest.mark.anyio
@pytest.mark.parametrize("seed", SEEDS, ids=[f"seed-{s}" for s in SEEDS])
async def test_joining_and_leaving_the_hub_under_appends_and_resets(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    store, flog, files = await open_kept_log(tmp_path, fsync=False)
    ids = itertools.count(1)
    foreign_ids = itertools.count(-1, -1)
    hubs = Hubs(frame_bytes=2000, writes_per_turn=rng.choice([1, 2, 64]))  # joins and leaves mid-publish
    followers: list[Follower] = []

    async def append() -> None:
        batch = [next(ids) for _ in range(rng.choice([1, 1, 2, 7]))]
        pad = "x" * rng.choice([0, 10, 300])
        with contextlib.suppress(SessionReset):  # a reset raced it: nothing to deliver
            await flog.append([orjson.dumps({"type": "X", "id": i, "pad": pad}) for i in batch])

    async def delete() -> None:
        await flog.delete()

    async def replace() -> None:
        files.keep(flog.path, flog.epoch)
        new = tmp_path / "replacement"
        new.write_bytes(b"".join(orjson.dumps({"type": "F", "id": next(foreign_ids)}) + b"\n"
                                 for _ in range(rng.randint(0, 3))))
        os.replace(new, flog.path)
        await flog.poll()

    def add_follower(tg: anyio.abc.TaskGroup) -> None:
        follower = Follower(hubs, flog, rng, refuse=rng.choice([0.0, 0.02, 0.2, 0.6]),
                            kind=rng.choice(list(ENCODERS)))  # one hub, a frame per transport
        after = Cursor(flog.epoch, rng.randint(0, flog.lines)) if flog.lines and rng.random() < 0.7 else None
        followers.append(follower)
        tg.start_soon(follower.run, after)

    try:
        async with anyio.create_task_group() as outer:
            outer.start_soon(hubs.run)
            async with anyio.create_task_group() as tg:
                for _ in range(3):
                    add_follower(tg)
                for _ in range(80):
                    ops = rng.choices(["append", "delete", "replace", "join", "quit", "turn"],
                                      weights=[12, 1, 1, 1, 1, 4], k=rng.randint(1, 8))
                    async with anyio.create_task_group() as step:
                        for op in ops:
                            if op == "join":
                                add_follower(tg)
                            elif op == "quit":
                                gone = rng.choice(followers)
                                gone.quit_on_hub = any(gone.member in h.members for h in hubs._hubs.values())
                                gone.scope.cancel()
                            elif op == "turn":
                                await anyio.lowlevel.checkpoint()
                            else:
                                step.start_soon({"append": append, "delete": delete, "replace": replace}[op])
                end = (flog.epoch, flog.lines + 1)
                staying = [f for f in followers if not f.scope.cancel_called]
                with anyio.fail_after(20):  # every follower reaches the end, by itself or on the hub
                    while not all(f.walk(f"seed {seed} follower {n}") == end for n, f in enumerate(staying)):
                        await anyio.sleep(0.02)
                tg.cancel_scope.cancel()
            outer.cancel_scope.cancel()
        for n, follower in enumerate(followers):
            at = follower.walk(f"seed {seed} follower {n}", files, flog)
            if follower.quit_on_hub:  # gone while riding: the hub's cursor for it is what it took, even mid-publish
                resume = follower.member.resume_at
                assert resume is not None and at == resume[:2], (f"seed {seed} follower {n}", at, resume)
            elif not follower.scope.cancel_called:
                assert at == end
        own, shared = sum(f.count("own") for f in followers), sum(f.count("shared") for f in followers)
        assert own > 0 and shared > 0, (own, shared)  # both paths, and hand-overs between them, were taken
        assert {f.kind for f in followers if f.count("shared")} == set(ENCODERS), seed  # by every transport
        assert hubs.count == 0
    finally:
        store.close()


def _event(n: int) -> bytes:
    return orjson.dumps({"type": "X", "id": n})


@contextlib.asynccontextmanager
async def riding_follower(tmp_path: Path, build: Callable[[BuildFrame], BuildFrame] | None = None, *,
                          fsync: bool = False) -> AsyncIterator[tuple[FileLog, Follower]]:
    """A log of one event and a WebSocket follower riding its hub, whose frames `build` may wrap;
    the hub's and the follower's tasks run until the block ends."""
    store, flog, _ = await open_kept_log(tmp_path, fsync=fsync)
    try:
        await flog.append([_event(1)])
        hubs = Hubs(frame_bytes=2000)
        follower = Follower(hubs, flog, random.Random(0), refuse=0.0, kind="websocket")
        if build is not None:
            follower.member.build = build(follower.member.build)
        async with anyio.create_task_group() as tg:
            tg.start_soon(hubs.run)
            tg.start_soon(follower.run, None)
            with anyio.fail_after(10):
                while not any(follower.member in h.members for h in hubs._hubs.values()):
                    await anyio.sleep(0.01)
            for _ in range(3):
                await anyio.lowlevel.checkpoint()  # the hub's task parks
            yield flog, follower
            tg.cancel_scope.cancel()
    finally:
        store.close()


def counting_reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many times any `LogReader.read` ran: the hub's task reads, a publish from inside a
    change does not (the follower's own reader is idle on the hub)."""
    calls = [0]
    read = LogReader.read

    async def counted(self: LogReader, budget: int) -> list[Item]:
        calls[0] += 1
        return await read(self, budget)

    monkeypatch.setattr(LogReader, "read", counted)
    return calls


@pytest.mark.unit
@pytest.mark.anyio
async def test_the_hub_writes_a_commit_cycles_appends_from_inside_it(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """With fsync on, a change is a commit cycle's: the hub writes its frame from inside the
    cycle's callback, with no task woken for it (counted: no reader reads; and a listener after
    the hub's, called by the same change, finds the frame out already)."""
    async with riding_follower(tmp_path, fsync=True) as (flog, follower):
        shared, reads = follower.count("shared"), counting_reads(monkeypatch)
        at_change: list[int] = []

        def after_the_hub() -> None:
            at_change.append(follower.count("shared"))

        flog.changes.listen(after_the_hub)
        try:
            for n in range(2, 7):
                await flog.append([_event(n)])
                assert follower.count("shared") == shared + n - 1
        finally:
            flog.changes.unlisten(after_the_hub)
        assert at_change == [shared + n - 1 for n in range(2, 7)]
        assert reads == [0]
        assert follower.walk("published inside the cycle") == (flog.epoch, 7)


@pytest.mark.unit
@pytest.mark.anyio
async def test_the_appends_of_one_turn_share_a_frame_without_the_hubs_task(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """With fsync off, a change is one append: the hub gathers a loop turn's appends into one
    frame, written by one callback, with no task woken for it."""
    async with riding_follower(tmp_path) as (flog, follower):
        shared, reads = follower.count("shared"), counting_reads(monkeypatch)
        for n in range(2, 5):
            await flog.write([_event(n)])  # takes no loop turn
        assert follower.count("shared") == shared
        await anyio.lowlevel.checkpoint()
        assert follower.count("shared") == shared + 1 and reads == [0]
        assert follower.walk("one frame for a turn") == (flog.epoch, 5)


@pytest.mark.unit
@pytest.mark.anyio
async def test_a_frame_that_fails_inside_the_change_ends_the_hub_and_its_follower_reads_on(tmp_path: Path) -> None:
    """A publish that raises from inside the change (the append is not failed by it) ends the hub
    as a failing hub task would: its member reads on by itself from before that frame, no gap."""
    failures = [RuntimeError("frame build failed")]

    def once_failing(build: BuildFrame) -> BuildFrame:
        def wrapped(epoch: str, items: list[Item]) -> bytes:
            if failures:
                raise failures.pop()
            return build(epoch, items)
        return wrapped

    async with riding_follower(tmp_path, once_failing) as (flog, follower):
        await flog.write([_event(2)])
        await flog.append([_event(3)])
        with anyio.fail_after(10):
            while follower.walk("after a failed publish") != (flog.epoch, 4):
                await anyio.sleep(0.01)
        assert not failures


@pytest.mark.server
@pytest.mark.anyio
async def test_a_stalled_follower_leaves_the_hub_and_never_slows_a_reading_one(tmp_path: Path) -> None:
    """Count-based: while a peer that never reads sits on the same session, a reading follower gets
    every event through the hub, and the stalled one holds no place in it."""
    async with run_gateway(tmp_path / "state", send_timeout=30.0) as gw:
        await gw.append("s", [{"type": "X", "n": -1}])
        hubs = gw.gateway.streams.hubs
        stalled = await stalled_client(gw.events_url("s", ws=True))
        try:
            seen = Seen()
            async with websockets.connect(gw.events_url("s", ws=True), compression=None, max_size=None) as ws:
                while not seen.control("live"):
                    seen.take_frame(await ws.recv())
                pad = "x" * 16_000
                total = 300  # ~5 MB: far more than the stalled peer's socket and transport buffers hold
                with anyio.fail_after(60):
                    for start in range(0, total, 10):
                        await gw.append("s", [{"type": "X", "n": n, "pad": pad} for n in range(start, start + 10)])
                        while len(seen.events) < start + 11:
                            seen.take_frame(await ws.recv())
                assert [e["n"] for e in seen.events] == list(range(-1, total))
                assert seen.seqs == list(range(1, total + 2))
                (hub,) = hubs._hubs.values()
                assert len(hub.members) == 1  # the reader rides the hub; the stalled peer left it
                assert gw.gateway.registry.total == 2  # and is still connected, on its own reader
        finally:
            stalled.close()


@pytest.mark.server
@pytest.mark.anyio
async def test_sse_and_ndjson_followers_ride_the_hub_and_a_stalled_one_leaves_it(tmp_path: Path) -> None:
    """SSE and NDJSON followers at the live edge take the hub's chunks (one per transport and
    append); one that stopped reading leaves the hub and never holds up the others (count-based)."""
    async with run_gateway(tmp_path / "state", send_timeout=30.0) as gw:
        await gw.append("s", [{"type": "X", "n": -1}])
        hubs = gw.gateway.streams.hubs
        url = gw.events_url("s")
        stalled = await stalled_http_client(url, "Accept: text/event-stream")
        got: dict[str, list[int]] = {"sse": [], "ndjson": []}
        total = 300  # ~5 MB: far more than the stalled peer's socket and transport buffers hold

        async def follow(kind: str) -> None:
            headers = {"accept": "text/event-stream"} if kind == "sse" else {}
            async with httpx.AsyncClient(verify=TLS, timeout=60) as http, http.stream(
                    "GET", url + ("" if kind == "sse" else "?follow=1"), headers=headers) as resp:
                async for line in resp.aiter_lines():
                    if kind == "sse" and line.startswith("data: "):
                        got[kind].append(orjson.loads(line[6:])["n"])
                    elif kind == "ndjson" and '"event"' in line:
                        got[kind].append(orjson.loads(line)["event"]["n"])
                    if len(got[kind]) == total + 1:
                        return

        try:
            async with anyio.create_task_group() as tg:
                for kind in got:
                    tg.start_soon(follow, kind)
                with anyio.fail_after(60):  # guards against a hang only
                    while not all(got.values()):
                        await anyio.sleep(0.01)
                    pad = "x" * 16_000
                    for start in range(0, total, 10):
                        if start == 150:
                            (hub,) = hubs._hubs.values()
                            assert sorted(m.kind for m in hub.members) == ["ndjson", "sse"]  # the stalled one left
                        await gw.append("s", [{"type": "X", "n": n, "pad": pad} for n in range(start, start + 10)])
                        while min(len(v) for v in got.values()) < start + 11:
                            await anyio.sleep(0.005)
            assert got == {kind: list(range(-1, total)) for kind in got}
            with anyio.fail_after(10):  # the readers' ends reach the server; the stalled peer stays, on its own reader
                while gw.gateway.registry.total != 1:
                    await anyio.sleep(0.01)
        finally:
            stalled.close()


@pytest.mark.unit
def test_items_after_a_reset_in_one_frame_carry_the_new_epoch() -> None:
    """A reader that meets a reset mid-read hands out old-epoch batches, the reset, then new ones."""
    items: list[Item] = [Batch(3, 3, b'{"a":1}'), Reset("new"), Batch(1, 1, b'{"b":2}')]
    ws = WebSocketEncoder.items("old", items)
    assert b'"cursor":"old-3"' in ws and b'"cursor":"new-1"' in ws
    sse = SseEncoder().items("old", items)
    assert b"id: old-3\n" in sse and b"id: new-1\n" in sse
    nd = NdjsonEncoder().items("old", items)
    assert b'"cursor":"old-3"' in nd and b'"cursor":"new-1"' in nd
