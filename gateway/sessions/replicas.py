"""`connections` and `lastSeen` of every replica's clients, shared through a JetStream key-value bucket.

Key `<session>` of bucket `<stream>_LIVE` holds, per replica, how many streams it has open on the
session, its `lastSeen`, and when it wrote that. Each replica rewrites its own part (compare-and-set
on the key's last sequence, retried) as soon as its count changes (a stream opening or closing
wakes the loop; at most one pass every `PROMPT_PASS`) and on every heartbeat while it has clients;
a part not rewritten for three heartbeats is a replica gone, and is ignored and dropped.
Values expire with the bucket's max age, so a session no one watches leaves nothing behind.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import time
from typing import Any

import anyio
import orjson

from gateway.sessions.registry import Registry
from gateway.store.base import StoreError
from gateway.store.nats import layout
from gateway.store.nats.conn import Conflict, NatsConn

log = logging.getLogger("gateway.sessions")

PASS_INTERVAL = 0.5
"""Seconds between two passes over the sessions while no stream opens or closes (heartbeats)."""
PROMPT_PASS = 0.05
"""Least seconds between two passes: a burst of connections costs at most 20 passes a second."""


def _now_ms() -> int:
    return int(time.time() * 1000)


def merge(parts: dict[str, Any], now: int, fresh_ms: int) -> tuple[int, int | None]:
    """(connections, lastSeen) over the replicas' parts still fresh at `now` (pure)."""
    live = [p for p in parts.values() if isinstance(p, dict) and now - int(p.get("at", 0)) <= fresh_ms]
    seen = [int(p["lastSeen"]) for p in live if p.get("lastSeen") is not None]
    return sum(int(p.get("connections", 0)) for p in live), max(seen) if seen else None


class Liveness:
    """This replica's side of the shared liveness bucket."""

    def __init__(self, conn: NatsConn, registry: Registry, heartbeat: float) -> None:
        self._conn = conn
        self._registry = registry
        self._heartbeat_ms = int(heartbeat * 1000)
        self.replica = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self.bucket = f"{conn.stream}_LIVE"
        self._published: dict[tuple[str, str], tuple[int, int]] = {}  # (connections, at)
        self._prompt: anyio.Event | None = None

    @property
    def fresh_ms(self) -> int:
        return 3 * self._heartbeat_ms

    def _subject(self, session: str) -> str:
        return f"$KV.{self.bucket}.{session}"

    async def ensure_bucket(self) -> None:
        max_age = max(60.0, 10 * self._heartbeat_ms / 1000)
        await self._conn.ensure_bucket(self.bucket, max_age_s=max_age)

    async def read(self, project: str, session: str) -> tuple[int, int | None]:
        """Every replica's clients of the session: (connections, lastSeen)."""
        got = await self._conn.get(last_by=self._subject(session), stream=f"KV_{self.bucket}")
        parts = orjson.loads(got.data).get("replicas", {}) if got is not None and got.data else {}
        parts.pop(self.replica, None)  # this replica's own part: from its registry, exact and current
        entry = self._registry.entry(project, session)
        if entry is not None:
            parts[self.replica] = {"connections": entry.open_connections, "lastSeen": entry.last_seen, "at": _now_ms()}
        return merge(parts, _now_ms(), self.fresh_ms)

    def changed(self) -> None:
        """A stream opened or closed here (the registry's hook): publish its count now."""
        if self._prompt is not None:
            self._prompt.set()

    async def run(self) -> None:
        """Publish this replica's part of each session whose count changed, or whose clients are due
        a heartbeat; NATS being away only delays it."""
        self._prompt = anyio.Event()
        while True:
            await anyio.sleep(PROMPT_PASS)
            with anyio.move_on_after(PASS_INTERVAL - PROMPT_PASS):
                await self._prompt.wait()
            self._prompt = anyio.Event()  # a change from here on, during the pass too, wakes the next
            now = _now_ms()
            for key, entry in list(self._registry.entries.items()):
                count = entry.open_connections
                before = self._published.get(key)
                due = before is None or before[0] != count or (count and now - before[1] >= self._heartbeat_ms)
                if not due or (before is None and not count):
                    continue
                try:
                    await self._put(key[1], count, entry.last_seen)
                except StoreError as exc:
                    log.debug("liveness not published", extra={"session": key[1], "error": str(exc)})
                    break
                self._published[key] = (count, now)
            for key in [k for k in self._published if k not in self._registry.entries]:
                del self._published[key]

    async def _put(self, session: str, connections: int, last_seen: int) -> None:
        subject = self._subject(session)
        while True:
            got = await self._conn.get(last_by=subject, stream=f"KV_{self.bucket}")
            value = orjson.loads(got.data) if got is not None and got.data else {}
            now = _now_ms()
            parts = {r: p for r, p in value.get("replicas", {}).items() if now - int(p.get("at", 0)) <= self.fresh_ms}
            parts[self.replica] = {"connections": connections, "lastSeen": last_seen, "at": now}
            headers = {layout.EXPECTED_LAST_SUBJECT_SEQ: str(got.sseq if got is not None else 0)}
            try:
                await self._conn.publish(subject, orjson.dumps({"replicas": parts}), headers)
                return
            except Conflict:
                continue
