"""Liveness of sessions across the workers of one server (`--workers N`).

Each worker owns its registry; a session's status and `/metrics` must speak for all of them.
Every worker writes what it knows (open streams by transport, and per session its open streams
and lastSeen) to one small file of its own, `<run dir>/live/worker-<i>.json`, replaced
atomically, only when something changed: as soon as a stream opens or closes (at most one write
every `PROMPT_WRITE`), else every `SHARE_INTERVAL` (lastSeen). The worker that answers adds its
own live registry to the other workers' files: counts of other workers lag by `PROMPT_WRITE` at
most, plus however long their event loops wait for a CPU (a timer of a fixed period, instead,
would add its period to that wait on a loaded machine); `lastSeen` is the freshest any worker has
written. The run dir is a
per-server temporary directory on the host (not the state volume): it describes processes,
which end with the server.
"""

from __future__ import annotations

import contextlib
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import orjson

from gateway.sessions.registry import Registry

SHARE_INTERVAL = 1.0
"""Seconds between a worker's writes of its table while no stream opens or closes (lastSeen)."""
PROMPT_WRITE = 0.05
"""Least seconds between two writes: a burst of connections costs at most 20 writes a second,
however many sessions the table holds."""


@dataclass
class Liveness:
    """What status and metrics report: open streams by transport, and per session (connections, lastSeen)."""

    by_transport: Counter[str] = field(default_factory=Counter)
    sessions: dict[tuple[str, str], tuple[int, int]] = field(default_factory=dict)

    def add(self, table: dict[str, Any]) -> None:
        """Fold one worker's table in: counts add up, lastSeen keeps the freshest."""
        self.by_transport.update(table.get("transports", {}))
        for project, session, conns, seen in table.get("sessions", []):
            key = (project, session)
            old_conns, old_seen = self.sessions.get(key, (0, 0))
            self.sessions[key] = (old_conns + conns, max(old_seen, seen))


def table_of(registry: Registry) -> dict[str, Any]:
    """One worker's registry as a table (the file's content, and the local part of a merge)."""
    return {
        "transports": {t: n for t, n in registry.by_transport.items() if n},
        "sessions": [[e.project, e.session, e.open_connections, e.last_seen] for e in registry.entries.values()],
    }


def merged(tables: Iterable[dict[str, Any]]) -> Liveness:
    live = Liveness()
    for table in tables:
        live.add(table)
    return live


class WorkerTables:
    """This worker's file, and the merge of every worker's."""

    def __init__(self, registry: Registry, run_dir: Path, index: int) -> None:
        self.registry = registry
        self.dir = run_dir / "live"
        self.index = index
        self.path = self.dir / f"worker-{index}.json"
        self._written: bytes | None = None
        self._prompt: anyio.Event | None = None

    def publish(self) -> None:
        data = orjson.dumps(table_of(self.registry) | {"pid": os.getpid()})
        if data == self._written:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, self.path)
        self._written = data

    def others(self) -> list[dict[str, Any]]:
        """The tables of the other workers that are still running."""
        tables = []
        for path in self.dir.glob("worker-*.json"):
            if path == self.path:
                continue
            with contextlib.suppress(OSError, orjson.JSONDecodeError):
                table = orjson.loads(path.read_bytes())
                if _alive(table.get("pid")):
                    tables.append(table)
        return tables

    def liveness(self) -> Liveness:
        return merged([table_of(self.registry), *self.others()])

    def changed(self) -> None:
        """A stream opened or closed here (the registry's hook): write the table now, not at the
        next period."""
        if self._prompt is not None:
            self._prompt.set()

    async def run(self) -> None:
        while True:
            self._prompt = anyio.Event()  # before the write: a change during the pause is kept
            self.publish()
            await anyio.sleep(PROMPT_WRITE)
            with anyio.move_on_after(SHARE_INTERVAL - PROMPT_WRITE):
                await self._prompt.wait()

    def remove(self) -> None:
        with contextlib.suppress(OSError):
            self.path.unlink()


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
