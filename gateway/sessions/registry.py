"""Live sessions: who is connected, when each session was last seen, and idle eviction (PROTOCOL §6).

`lastSeen` is refreshed on connect, on every append and, for as long as a connection stays
open, by the heartbeat loop: a session someone is watching never looks idle, however quiet it
is. The sweeper only drops caches (open files, index) of sessions with no
connection, never data.

`lastSeen` outlives the registry's entry: `keep_seen` (store=files: the session's meta.json) is
given it before the sweeper drops an idle entry, at shutdown, and at most every `KEEP_INTERVAL`
seconds while a session is watched, never per event.
"""

from __future__ import annotations

import itertools
import logging
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import anyio

from gateway.clock import now_ms

log = logging.getLogger("gateway.sessions")

KEEP_INTERVAL = 60.0
"""Seconds between writes of a watched session's lastSeen (what a crash may lose of it)."""

Seen = list[tuple[str, str, int]]
"""(project, session, lastSeen ms) of sessions whose lastSeen changed since it was last kept."""


@dataclass
class SessionEntry:
    project: str
    session: str
    last_seen: int = field(default_factory=now_ms)
    connections: Counter[str] = field(default_factory=Counter)
    evictions: int = 0
    kept: int = 0  # the lastSeen last handed to `Registry.keep_seen`

    @property
    def open_connections(self) -> int:
        return sum(self.connections.values())


@dataclass(frozen=True, slots=True)
class Connection:
    id: str
    project: str
    session: str
    transport: str


class TooManyConnections(Exception):
    """Over GATEWAY_MAX_CONNECTIONS: WebSocket closes with 1013, HTTP answers 503."""


class Registry:
    def __init__(self, *, max_connections: int, evict: Callable[[str, str], str]) -> None:
        """`evict(project, session)` drops a session's caches: "evicted", "absent" or "busy" (kept)."""
        self._entries: dict[tuple[str, str], SessionEntry] = {}
        self._max = max_connections
        self._evict = evict
        self._ids = itertools.count(1)
        self.total = 0
        self.by_transport: Counter[str] = Counter()
        self.on_evict: Callable[[SessionEntry], None] | None = None
        self.keep_seen: Callable[[Seen], None] | None = None
        """Makes lastSeen durable (blocking I/O, run in a worker thread); None: lastSeen ends with the entry."""
        self.sockets: Callable[[], int] = lambda: 0
        """Open client connections of the server (streams or not); the server sets it."""
        self.on_change: list[Callable[[], None]] = []
        """Called when a stream opens or closes: what shares the counts (workers' tables, NATS
        liveness) writes them at once."""

    @property
    def entries(self) -> dict[tuple[str, str], SessionEntry]:
        return self._entries

    def entry(self, project: str, session: str) -> SessionEntry | None:
        return self._entries.get((project, session))

    def touch(self, project: str, session: str) -> SessionEntry:
        entry = self._entries.get((project, session))
        if entry is None:
            entry = self._entries[(project, session)] = SessionEntry(project, session)
        else:
            entry.last_seen = now_ms()
        return entry

    def check_capacity(self) -> None:
        """Every connection counts against GATEWAY_MAX_CONNECTIONS, the asking one included."""
        if self.sockets() > self._max:
            raise TooManyConnections(f"the gateway is at its limit of {self._max} open connections; retry later")

    def connect(self, project: str, session: str, transport: str) -> Connection:
        if self.total >= self._max:
            raise TooManyConnections(f"the gateway is at its limit of {self._max} open streams; retry later")
        self.check_capacity()
        entry = self.touch(project, session)
        entry.connections[transport] += 1
        self.total += 1
        self.by_transport[transport] += 1
        self._changed()
        return Connection(f"c{next(self._ids)}", project, session, transport)

    def disconnect(self, conn: Connection, *, forget: bool = False) -> None:
        """`forget`: the session turned out not to exist; its entry goes unless others use it."""
        entry = self._entries[(conn.project, conn.session)]
        entry.connections[conn.transport] -= 1
        entry.last_seen = now_ms()
        self.total -= 1
        self.by_transport[conn.transport] -= 1
        if forget and entry.open_connections == 0:
            del self._entries[(conn.project, conn.session)]
        self._changed()

    def _changed(self) -> None:
        for callback in self.on_change:
            callback()

    def heartbeat(self) -> int:
        """Refresh lastSeen of every session with an open connection; returns how many."""
        now = now_ms()
        touched = 0
        for entry in self._entries.values():
            if entry.open_connections:
                entry.last_seen = now
                touched += 1
        return touched

    def idle(self, stale_after: float) -> list[SessionEntry]:
        """Sessions idle past `stale_after` seconds and with no connection."""
        cutoff = now_ms() - int(stale_after * 1000)
        return [e for e in self._entries.values() if not e.open_connections and e.last_seen < cutoff]

    def sweep(self, stale_after: float) -> list[SessionEntry]:
        """Evict caches of sessions idle past `stale_after` seconds and with no connection."""
        evicted = []
        for entry in self.idle(stale_after):
            key = (entry.project, entry.session)
            outcome = self._evict(entry.project, entry.session)
            if outcome == "busy":
                continue
            if outcome == "evicted":
                entry.evictions += 1
                evicted.append(entry)
                if self.on_evict is not None:
                    self.on_evict(entry)
                log.info("evicted idle session", extra={"project": entry.project, "session": entry.session})
            del self._entries[key]
        return evicted

    def unkept(self, entries: Iterable[SessionEntry]) -> Seen:
        """The lastSeen of `entries` that changed since last kept, now marked kept."""
        seen = []
        for entry in entries:
            if entry.last_seen > entry.kept:
                entry.kept = entry.last_seen
                seen.append((entry.project, entry.session, entry.last_seen))
        return seen

    async def keep(self, entries: Iterable[SessionEntry]) -> None:
        if self.keep_seen is not None and (seen := self.unkept(entries)):
            await anyio.to_thread.run_sync(self.keep_seen, seen)

    def keep_all(self) -> None:
        """At shutdown: keep every session's lastSeen (blocking: the loops have stopped)."""
        if self.keep_seen is not None and (seen := self.unkept(self._entries.values())):
            self.keep_seen(seen)

    async def run_heartbeat(self, interval: float) -> None:
        """Refresh lastSeen of watched sessions every `interval`; keep it every `KEEP_INTERVAL`."""
        kept_at = anyio.current_time()
        while True:
            await anyio.sleep(interval)
            self.heartbeat()
            if anyio.current_time() - kept_at >= KEEP_INTERVAL:
                kept_at = anyio.current_time()
                await self.keep([e for e in self._entries.values() if e.open_connections])

    async def run_sweeper(self, interval: float, stale_after: float) -> None:
        while True:
            await anyio.sleep(interval)
            await self.keep(self.idle(stale_after))  # before their entries go: status then finds it kept
            self.sweep(stale_after)
