"""The shared path (gateway.stream.hub): followers join a session's hub at the live edge and leave
it when their transport cannot take a frame at once, under concurrent appends and resets.

No gap and no duplicate at either hand-over: every follower's frames, own and shared alike, must
be the log seq after seq within an epoch, start again at 1 after each reset, and end at the log's
end. Randomized with printed seeds (`GATEWAY_TEST_SEEDS=7,8` runs others).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import random
from pathlib import Path

import anyio
import anyio.lowlevel
import orjson
import pytest
import websockets

from gateway.store.base import SessionReset
from gateway.store.cursor import Cursor
from gateway.store.files import FileLog
from gateway.stream.framing import Batch, Item, NdjsonEncoder, Reset, SseEncoder, WebSocketEncoder
from gateway.stream.hub import Decision, Hubs, decide
from gateway.stream.pump import Heartbeats, PumpStats, pump
from gateway.stream.reader import LogReader, Mark
from tests.conftest import run_gateway
from tests.stalled import stalled_client
from tests.streamclient import Seen
from tests.test_reset_race import SEEDS, Files, open_kept_log


@pytest.mark.unit
def test_decide_joins_only_at_the_hubs_exact_position() -> None:
    assert decide(Mark("e1", 5, 10), Mark("e1", 5, 10)) is Decision.JOIN
    assert decide(Mark("e1", 4, 8), Mark("e1", 5, 10)) is Decision.WAIT_HUB  # the hub has more to publish
    assert decide(Mark("e0", 9, 30), Mark("e1", 1, 0)) is Decision.WAIT_HUB  # the hub has a reset to publish
    assert decide(Mark("e1", 6, 12), Mark("e1", 5, 10)) is Decision.READ


class Follower:
    """A pump on the shared path whose transport refuses a shared frame at random (above its
    high-water mark), recording every frame it takes, own or shared, in order."""

    def __init__(self, hubs: Hubs, flog: FileLog, rng: random.Random, refuse: float) -> None:
        self.reader = LogReader(flog, chunk_bytes=rng.choice([256, 4096, 1 << 16]))
        self.rng, self.refuse = rng, refuse
        self.frames: list[tuple[str, bytes]] = []
        self.stats = PumpStats()
        self.member = hubs.member(self.reader, "websocket", self.build, self.write, self.stats)
        self.start = 1
        self.start_epoch = ""
        self.scope = anyio.CancelScope()  # cancelled: the client is gone
        self.quit_on_hub = False

    @staticmethod
    def build(epoch: str, items: list[Item]) -> bytes:
        return WebSocketEncoder.items(epoch, items)

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
            await pump(self.reader, WebSocketEncoder(), self.send, follow=True,
                       frame_bytes=self.rng.choice([200, 2000]), heartbeats=Heartbeats(3600), stats=self.stats,
                       shared=self.member)

    def walk(self, label: str, files: Files | None = None, flog: FileLog | None = None) -> tuple[str, int]:
        """Check seq after seq per epoch (and, given the files, each event against the log's line at
        its seq); returns where the follower stands: (epoch, next seq)."""
        epoch, expected = self.start_epoch, self.start
        for _, frame in self.frames:
            for line in frame.split(b"\n"):
                obj = orjson.loads(line)
                if obj.get("control") == "reset":
                    epoch, expected = obj["epoch"], 1
                    continue
                if "events" not in obj:
                    assert obj.get("control") in ("live", "heartbeat"), (label, obj)
                    continue
                assert obj["first"] == expected, f"{label}: {'gap' if obj['first'] > expected else 'duplicate'} " \
                                                 f"at {epoch}: expected {expected}, got {obj['first']}"
                assert obj["cursor"] == f"{epoch}-{obj['last']}", (label, obj["cursor"], epoch)
                if files is not None and flog is not None:
                    got = [e["id"] for e in obj["events"]]
                    assert any(f[expected - 1 : obj["last"]] == got for f in files.ids_at(epoch, flog)), (
                        label, epoch, expected, got)
                expected = obj["last"] + 1
        return epoch, expected

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
        follower = Follower(hubs, flog, rng, refuse=rng.choice([0.0, 0.02, 0.2, 0.6]))
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
        assert hubs.count == 0
    finally:
        store.close()


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
