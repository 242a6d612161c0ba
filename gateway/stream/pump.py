"""The loop shared by every transport: replay, announce `live`, tail, heartbeat when idle."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Protocol

import anyio
import anyio.abc
import anyio.lowlevel

from gateway.clock import now_ms
from gateway.stream.framing import Encoder, Item, count_items
from gateway.stream.reader import Reader

Send = Callable[[bytes], Awaitable[None]]


class SendWatchdog:
    """The slow-client limit for every stream of a gateway, enforced by one task.

    It looks only at sends in progress, so idle and fast streams cost nothing: no timer per
    connection, and no cancel scope around every send (which would cost more than the rest of
    the per-frame work). Cancelling a send is safe: the transports write a frame whole or not
    at all.
    """

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.pending: dict[SendGuard, float] = {}  # guard -> when its oldest send in progress began

    def guard(self) -> SendGuard:
        return SendGuard(self)

    async def run(self) -> None:
        while True:
            await anyio.sleep(min(1.0, self.timeout / 4))
            now = time.monotonic()
            for guard, since in list(self.pending.items()):
                if now - since >= self.timeout:
                    guard.expire()


class SendGuard:
    """One stream's side of the watchdog: `scope` is cancelled when one of its sends waits too long.

    A stream may put a scope of its own in `scope` before it sends (one cancel scope less to hold).
    """

    __slots__ = ("_inflight", "_pending", "scope", "timed_out")

    def __init__(self, watchdog: SendWatchdog) -> None:
        self._pending = watchdog.pending
        self._inflight = 0
        self.scope = anyio.CancelScope()
        self.timed_out = False

    def wrap(self, send: Send) -> Send:
        async def guarded(data: bytes) -> None:
            self._inflight += 1
            if self._inflight == 1:
                self._pending[self] = time.monotonic()
            try:
                await send(data)
            finally:
                self._inflight -= 1
                if self._inflight == 0:
                    self._pending.pop(self, None)

        return guarded

    def expire(self) -> None:
        self._pending.pop(self, None)
        self.timed_out = True
        self.scope.cancel()


class SharedPath(Protocol):
    """The session's hub, as a follower at the live edge sees it (gateway.stream.hub.Member)."""

    def follow(self) -> Awaitable[None]:
        """Return once the pump should read again: it left the hub, or the hub or the log moved."""
        ...


class Heartbeats:
    """Heartbeats for every stream of a gateway from one loop, as the watchdog is one loop.

    An idle stream costs no task: the loop looks at each stream's last send, and only a stream
    that has been quiet for `interval` gets a short task that sends its heartbeat (behind the
    stream's watchdog guard, like any send). A failed heartbeat is the stream's own loop's
    business: its next send or receive sees the same failure.
    """

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._streams: dict[PumpStats, tuple[Send, Encoder]] = {}
        self._beating: set[PumpStats] = set()
        self._tg: anyio.abc.TaskGroup | None = None

    def add(self, stats: PumpStats, send: Send, encoder: Encoder) -> None:
        self._streams[stats] = (send, encoder)

    def remove(self, stats: PumpStats) -> None:
        self._streams.pop(stats, None)

    async def run(self) -> None:
        async with anyio.create_task_group() as tg:
            self._tg = tg
            try:
                while True:
                    await anyio.sleep(self.interval / 4)
                    self.beat(tg)
            finally:
                self._tg = None

    def beat(self, tg: anyio.abc.TaskGroup) -> None:
        now = time.monotonic()
        for stats, (send, encoder) in self._streams.items():
            if now - stats.last_send >= self.interval and stats not in self._beating:
                self._beating.add(stats)
                tg.start_soon(self._send, stats, send, encoder)

    async def _send(self, stats: PumpStats, send: Send, encoder: Encoder) -> None:
        try:
            await send(encoder.heartbeat(now_ms()))
            stats.last_send = time.monotonic()
        except Exception:
            pass
        finally:
            self._beating.discard(stats)


FrameHook = Callable[[int, int, int], None]
"""Called per frame sent with (events, skipped lines, bytes): how metrics follow a stream."""


class PumpStats:
    """What one stream has sent; read by logs and metrics when the stream ends."""

    __slots__ = ("bytes", "events", "frames", "last_send", "on_frame", "replay_seconds", "skipped")

    def __init__(self, on_frame: FrameHook | None = None) -> None:
        self.on_frame = on_frame
        self.events = 0
        self.skipped = 0
        self.frames = 0
        self.bytes = 0
        self.last_send = time.monotonic()
        self.replay_seconds: float | None = None

    def count(self, items: list[Item], nbytes: int) -> None:
        events, skipped = count_items(items)
        self.add(events, skipped, nbytes)

    def add(self, events: int, skipped: int, nbytes: int) -> None:
        self.took(events, skipped, nbytes, time.monotonic())
        if self.on_frame is not None:
            self.on_frame(events, skipped, nbytes)

    def took(self, events: int, skipped: int, nbytes: int, now: float) -> None:
        """Count a frame without reporting it: a hub reports its frames once for all members."""
        self.frames += 1
        self.bytes += nbytes
        self.last_send = now
        self.events += events
        self.skipped += skipped


async def pump(
    reader: Reader,
    encoder: Encoder,
    send: Send,
    *,
    follow: bool,
    frame_bytes: int,
    heartbeats: Heartbeats,
    stats: PumpStats,
    shared: SharedPath | None = None,
) -> None:
    """Stream until the end of the log (`follow=False`), the reader's stop condition, a cancel, or a failed `send`.

    `send` returns only once the transport has taken the frame: that await is the backpressure,
    so the reader never runs ahead of the client. Heartbeats come from the gateway's one
    `Heartbeats` loop, so waiting for the next event needs no timeout (a cancel scope per event
    per follower costs more than delivering the event) and an idle stream needs no task of its
    own. With `shared`, the live edge is the session's hub: its frames reach the transport
    without this loop, which resumes when the follower leaves it.
    """
    started = time.monotonic()
    live = False
    heartbeats.add(stats, send, encoder)
    try:
        while True:
            if await _send_next(reader, encoder, send, frame_bytes, stats):
                continue
            if reader.stopped:
                break
            if not live:
                live = True
                stats.replay_seconds = time.monotonic() - started
                if not follow:
                    break
                frame = encoder.live(reader.cursor)
                if frame is not None:
                    await send(frame)
                    stats.last_send = time.monotonic()
                del frame  # an idle stream holds no frame
            if shared is not None:
                await shared.follow()
            else:
                await reader.wait()
    finally:
        heartbeats.remove(stats)


async def _send_next(reader: Reader, encoder: Encoder, send: Send, frame_bytes: int, stats: PumpStats) -> bool:
    """Send the next frame, if the reader has one now: its items and bytes are gone on return."""
    epoch = reader.epoch  # the epoch of the first item: a reset may come within the items
    items = await reader.read(frame_bytes)
    if not items:
        return False
    data = encoder.items(epoch, items)
    await send(data)
    stats.count(items, len(data))
    # A peer that keeps up never blocks `send`, which then never yields: give the loop a turn.
    await anyio.lowlevel.checkpoint()
    return True
