"""Encode once, write many: the shared path of a session's followers at the live edge.

A follower whose own reader has caught up with the log joins its session's hub, if the hub has
published exactly up to the follower's position (`decide`, compared without an await in between,
so nothing can be published between the check and the join). From then on the hub's one reader
reads each append once, builds each transport's frame once, and writes that frame to every
member's transport without waiting. A member whose transport cannot take a frame at once (above
its high-water mark, closing) leaves before that frame and reads on with its own reader from the
hub's position before the frame: no gap, no duplicate, and a slow client never holds memory for
others nor delays them. A reset (DELETE, a replaced log) is an item of the hub's reader like any
other, so every member gets it.

A parked hub listens to its log: a change whose lines the log holds in memory (an append at the
live edge) is written to the members with no task woken for it. A commit cycle's change, which
already gathers what was appended meanwhile, is written from inside the cycle's callback, a
loop turn sooner than the hub's task could; where each append is a change of its own (fsync
off, NATS), one callback at the end of the loop turn writes the turn's appends as one frame, as
the task did, so that an overloaded loop still sends fewer, bigger frames. Anything else (a read
from disk, a reset, an undeliverable line, more members than one turn writes) wakes the hub's
task, which reads and writes as above.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Awaitable, Callable

import anyio
import anyio.abc
import anyio.lowlevel

from gateway.store.base import EventLog
from gateway.stream.framing import Item, count_items
from gateway.stream.pump import FrameHook, PumpStats
from gateway.stream.reader import LogReader, Mark, Reader

log = logging.getLogger("gateway.hub")

BuildFrame = Callable[[str, list[Item]], bytes]
"""A transport's wire frame (header included) for the items of one publish."""
WriteNow = Callable[[bytes], bool]
"""Write a whole frame to a transport now and return True, or write nothing and return False."""


WRITES_PER_TURN = 64
"""Members written between two turns of the event loop: a publish to thousands of followers lets
appends and their answers in meanwhile, and what they append shares the next frame."""


class Decision(enum.Enum):
    JOIN = "join"  # the hub has published exactly up to the follower
    WAIT_HUB = "wait_hub"  # the hub is behind the follower: it will publish soon
    READ = "read"  # the follower reads on by itself


def decide(hub: Mark, member: Mark) -> Decision:
    """Where a follower at the live edge goes, from the hub's published position and its own."""
    if hub.epoch == member.epoch and hub.seq == member.seq:
        return Decision.JOIN
    if hub.epoch != member.epoch or hub.seq < member.seq:
        return Decision.WAIT_HUB
    return Decision.READ


class Member:
    """One follower on the shared path; `follow` is what its pump calls at the live edge.

    `left` is a bare future, made when the member joins: an `anyio.Event` (an `asyncio.Event` and
    its deque) would be held by every idle follower parked in a hub.
    """

    __slots__ = ("_hubs", "build", "kind", "left", "reader", "resume_at", "stats", "write")

    def __init__(self, hubs: Hubs, reader: LogReader, kind: str, build: BuildFrame, write: WriteNow,
                 stats: PumpStats) -> None:
        self._hubs, self.reader, self.kind, self.build, self.write = hubs, reader, kind, build, write
        self.stats = stats
        self.left: asyncio.Future[None] | None = None
        self.resume_at: Mark | None = None

    def follow(self) -> Awaitable[None]:
        """Ride the hub until this member leaves it (then the reader is where the hub left it), or
        wait for the hub or the log to move; return so that the pump reads on. The hubs' own
        coroutine, not one wrapping it: a parked follower holds one frame less."""
        return self._hubs.follow(self)


class _Frame:
    """One publish in progress: the items, each kind's frame once built, and what members took."""

    __slots__ = ("before", "events", "frames", "hooks", "items", "next", "now", "order", "skipped", "taken")

    def __init__(self, before: Mark, items: list[Item], order: list[Member]) -> None:
        self.before, self.items = before, items
        self.order, self.next = order, 0  # the members to write, in join order, and how far it got
        self.events, self.skipped = count_items(items)
        self.now = time.monotonic()
        self.frames: dict[str, bytes] = {}
        self.hooks: dict[str, FrameHook | None] = {}  # per kind (the hooks of one kind count into the same metrics)
        self.taken: dict[str, int] = {}  # per kind: members that took the frame


class Hub:
    """One session's shared reader and its members."""

    def __init__(self, hubs: Hubs, reader: LogReader) -> None:
        self._hubs = hubs
        self.reader = reader
        self.published = reader.mark()
        self.members: dict[Member, None] = {}  # insertion-ordered set
        self._before = self.published  # where members still waiting for the frame being written stand
        self._behind: dict[Member, None] = {}  # those members
        self.advanced = asyncio.Event()  # asyncio's: one per frame, anyio's costs a backend lookup to make
        self.scope = anyio.CancelScope()

    def join(self, member: Member) -> asyncio.Future[None]:
        left = member.left = asyncio.get_running_loop().create_future()
        member.resume_at = None
        self.members[member] = None
        return left

    def leave(self, member: Member, at: Mark) -> None:
        if self._behind.pop(member, 0) is None:
            at = self._before  # it has not had the frame being written
        if self.members.pop(member, 0) is None:
            member.resume_at = at
            if member.left is not None and not member.left.done():
                member.left.set_result(None)
        if not self.members:
            self._hubs.drop(self)

    async def run(self, frame_bytes: int) -> None:
        with self.scope:
            try:
                woke = True  # the last step was a wait: no need to yield before the next frame
                while self.members:
                    items = await self.reader.read(frame_bytes)
                    if not items:
                        await self._park(frame_bytes)
                        woke = True
                        continue
                    if not woke:  # the log grew while the last frame was written: let others in first
                        await anyio.lowlevel.checkpoint()
                    await self.publish(items)
                    woke = False
            except Exception:
                log.exception("shared reader failed; its followers read on by themselves",
                              extra={"session": self._hubs.session_of(self)})
            finally:
                for member in list(self.members):
                    self.leave(member, self.published)
                self._hubs.drop(self)

    async def _park(self, frame_bytes: int) -> None:
        """Wait for the log to move. Meanwhile the lines the log holds in memory are published
        with no task woken: a batched change (a commit cycle's) from inside it, a loop turn
        sooner than this task could; changes of one append each, by one callback per loop turn,
        as one frame. One that takes more (a read from disk, a reset, an undeliverable line, more
        members than one turn writes) wakes the task instead."""
        reader, changes = self.reader, self.reader.log.changes
        if reader.moved():
            return
        loop = asyncio.get_running_loop()
        woken = loop.create_future()
        gathering = False

        def publish_held() -> None:
            nonlocal gathering
            gathering = False
            if woken.done():
                return
            try:
                if len(self.members) <= self._hubs.writes_per_turn:
                    items = reader.read_held(frame_bytes)
                    if items == []:
                        return
                    if items is not None:
                        self._write(self._start(items), len(self.members))
                        self._finish()
                        return
            except Exception as exc:  # not the change's to handle: the task ends the hub as `run` says
                woken.set_exception(exc)
                return
            woken.set_result(None)

        def on_change() -> None:
            nonlocal gathering
            if changes.batched:
                publish_held()
            elif not gathering:  # one change per append: the appends of this turn share a frame
                gathering = True
                loop.call_soon(publish_held)

        changes.listen(on_change)
        try:
            await woken
        finally:
            changes.unlisten(on_change)

    async def publish(self, items: list[Item]) -> None:
        """Write the items' frame to every member; one that cannot take it at once leaves before it.

        The hub's position moves first: a follower joining while the frame is being written has
        read these items by itself. Members not yet written stand before the frame.
        """
        frame, per_turn = self._start(items), self._hubs.writes_per_turn
        while self._write(frame, per_turn):
            await anyio.lowlevel.checkpoint()
        self._finish()

    def _start(self, items: list[Item]) -> _Frame:
        before, after = self.published, self.reader.mark()
        self._before, self._behind, self.published = before, dict(self.members), after
        return _Frame(before, items, list(self.members))

    def _write(self, frame: _Frame, budget: int) -> bool:
        """Write the frame to up to `budget` more members; True if some are still behind it."""
        behind, order, before = self._behind, frame.order, frame.before
        i = frame.next
        while i < len(order) and budget > 0:
            member = order[i]
            i += 1
            if member not in behind:
                continue  # it left while earlier members were written
            kind = member.kind
            data = frame.frames.get(kind)
            if data is None:
                data = frame.frames[kind] = member.build(before.epoch, frame.items)
                frame.hooks[kind], frame.taken[kind] = member.stats.on_frame, 0
            # Behind the frame until it took it: if building or writing raises, the hub ends and
            # the member resumes before the frame (a gap never; at worst the frame twice).
            if member.write(data):
                del behind[member]
                member.stats.took(frame.events, frame.skipped, len(data), frame.now)
                frame.taken[kind] += 1
            else:
                self.leave(member, before)
            budget -= 1
        frame.next = i
        if i < len(order):
            return True
        for kind, n in frame.taken.items():
            if (hook := frame.hooks[kind]) is not None and n:
                hook(frame.events * n, frame.skipped * n, len(frame.frames[kind]) * n)
        return False

    def _finish(self) -> None:
        self.advanced.set()
        self.advanced = asyncio.Event()  # asyncio's: one per frame, anyio's costs a backend lookup to make


class Hubs:
    """Every session's hub; `run` (one task per gateway) hosts the hubs' readers."""

    def __init__(self, frame_bytes: int, writes_per_turn: int = WRITES_PER_TURN) -> None:
        self.frame_bytes, self.writes_per_turn = frame_bytes, writes_per_turn
        self._hubs: dict[EventLog, Hub] = {}
        self._tg: anyio.abc.TaskGroup | None = None

    def member(self, reader: LogReader, kind: str, build: BuildFrame, write: WriteNow, stats: PumpStats) -> Member:
        return Member(self, reader, kind, build, write, stats)

    def shared(self, reader: Reader, kind: str, build: BuildFrame,
               make_writer: Callable[[], WriteNow | None] | None, stats: PumpStats, *, follow: bool) -> Member | None:
        """The session's hub for a follower whose frames are the same bytes as every follower's of
        its `kind`: one that follows raw lines with no stop condition (the hub knows none), over a
        transport that takes a prebuilt frame without waiting (`make_writer` gives None, or is None,
        where it cannot). None: the follower keeps its own reader."""
        if not follow or make_writer is None or not isinstance(reader, LogReader) or not reader.open_ended:
            return None
        write = make_writer()
        return None if write is None else Member(self, reader, kind, build, write, stats)

    @property
    def count(self) -> int:
        return len(self._hubs)

    def session_of(self, hub: Hub) -> str | None:
        return next((getattr(lg, "session", None) for lg, h in self._hubs.items() if h is hub), None)

    async def run(self) -> None:
        async with anyio.create_task_group() as tg:
            self._tg = tg
            try:
                await anyio.sleep_forever()
            finally:
                self._tg = None

    def drop(self, hub: Hub) -> None:
        log_ = hub.reader.log
        if self._hubs.get(log_) is hub:
            del self._hubs[log_]
        hub.advanced.set()
        hub.scope.cancel()

    async def follow(self, member: Member) -> None:
        reader = member.reader
        hub = self._hubs.get(reader.log)
        if hub is None:
            if self._tg is None:  # not serving (shutting down): the follower waits by itself
                await reader.wait()
                return
            hub = self._hubs[reader.log] = Hub(self, reader.clone())
            self._tg.start_soon(hub.run, self.frame_bytes)
        decision = decide(hub.published, reader.mark())
        if decision is Decision.WAIT_HUB:
            await hub.advanced.wait()
            return
        if decision is Decision.READ:
            await reader.wait()
            return
        left = hub.join(member)
        try:
            await left
        finally:
            member.left = None
            hub.leave(member, hub.published)  # cancelled while riding: the cursor is the hub's
            assert member.resume_at is not None
            reader.place(member.resume_at)
