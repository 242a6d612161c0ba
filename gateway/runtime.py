"""The objects one running gateway shares between its handlers and background loops."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import anyio

from gateway.config import Settings
from gateway.sessions.registry import Registry
from gateway.store.files import FileStore

log = logging.getLogger("gateway")


@dataclass
class Gateway:
    settings: Settings
    store: FileStore
    registry: Registry
    draining: anyio.Event = field(default_factory=anyio.Event)

    @classmethod
    def create(cls, settings: Settings) -> Gateway:
        store = FileStore(settings.state_dir, fsync=settings.fsync == "always",
                          max_event_bytes=settings.max_event_bytes)
        registry = Registry(max_connections=settings.max_connections, evict=lambda _p, s: store.evict(s))
        return cls(settings, store, registry)

    def begin_shutdown(self) -> None:
        """Stop taking new streams and end the open ones (WebSocket 1001, SSE/NDJSON end of body)."""
        if not self.draining.is_set():
            log.info("draining: closing streams")
            self.draining.set()

    async def run_loops(self) -> None:
        """Background work for the life of the server: other-process appends, heartbeat, sweeper."""
        s = self.settings
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._poll_loop, s.poll_interval)
            tg.start_soon(self.registry.run_heartbeat, s.heartbeat_interval)
            tg.start_soon(self.registry.run_sweeper, s.sweep_interval, s.stale_after)

    async def _poll_loop(self, interval: float) -> None:
        while True:
            await anyio.sleep(interval)
            try:
                await self.store.poll_all()
            except Exception:
                log.exception("poll of session logs failed")
