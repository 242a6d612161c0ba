"""What a stream needs from its gateway, and no more.

Explicit, so that transports depend on the stream and session layers only: never on the API
handlers, nor on the whole `Gateway` object.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from gateway.sessions.registry import Connection, Registry
from gateway.stream.hub import Hubs
from gateway.stream.pump import FrameHook, Heartbeats, PumpStats, SendWatchdog

log = logging.getLogger("gateway.streams")


@dataclass(frozen=True)
class StreamLimits:
    """The settings a stream reads: GATEWAY_FRAME_BYTES, GATEWAY_HEARTBEAT_INTERVAL, GATEWAY_SEND_TIMEOUT."""

    frame_bytes: int
    heartbeat_interval: float
    send_timeout: float


class StreamMetrics(Protocol):
    def frame_hook(self, transport: str) -> FrameHook: ...
    def stream_ended(self, transport: str, reason: str, stats: PumpStats) -> None: ...


class Draining:
    """Whether the gateway has begun to shut down, and what to call when it does.

    Each open stream registers a callback rather than keeping a task that waits for an event:
    an idle follower then holds no task, cancel scope or event of its own for it.
    """

    def __init__(self) -> None:
        self._set = False
        self._watchers: dict[Callable[[], None], None] = {}

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        if self._set:
            return
        self._set = True
        watchers, self._watchers = self._watchers, {}
        for watcher in watchers:
            watcher()

    def watch(self, watcher: Callable[[], None]) -> None:
        """Call `watcher` once the gateway drains (at once if it already does), unless unwatched first."""
        if self._set:
            watcher()
        else:
            self._watchers[watcher] = None

    def unwatch(self, watcher: Callable[[], None]) -> None:
        self._watchers.pop(watcher, None)


@dataclass(frozen=True)
class StreamContext:
    limits: StreamLimits
    registry: Registry
    watchdog: SendWatchdog
    metrics: StreamMetrics
    draining: Draining
    """Set when the gateway begins to shut down: every stream ends (WebSocket 1001, end of body)."""
    hubs: Hubs
    heartbeats: Heartbeats

    def track(self, conn: Connection) -> StreamTrack:
        return StreamTrack(self, conn)


class StreamTrack:
    """One open stream's bookkeeping: its counters, its watchdog guard, and the one way it ends."""

    __slots__ = ("_ctx", "_started", "conn", "guard", "stats")

    def __init__(self, ctx: StreamContext, conn: Connection) -> None:
        self._ctx, self.conn = ctx, conn
        self.stats = PumpStats(ctx.metrics.frame_hook(conn.transport))
        self.guard = ctx.watchdog.guard()
        self._started = time.monotonic()

    def opened(self, **fields: Any) -> None:
        c = self.conn
        log.info("stream open", extra={"conn": c.id, "session": c.session, "project": c.project,
                                        "transport": c.transport, **fields})

    def closed(self, kind: str, reason: str, **fields: Any) -> None:
        """Deregister, count the close as `kind` (end, client, slow, shutdown, error) and log it."""
        c, s = self.conn, self.stats
        self._ctx.registry.disconnect(c)
        self._ctx.metrics.stream_ended(c.transport, kind, s)
        log.info("stream closed", extra={
            "conn": c.id, "session": c.session, "transport": c.transport, **fields, "reason": reason,
            "events": s.events, "frames": s.frames, "bytes": s.bytes,
            "seconds": round(time.monotonic() - self._started, 3),
        })
