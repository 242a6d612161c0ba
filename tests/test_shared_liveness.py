"""The workers' liveness tables: counts add up, lastSeen keeps the freshest (pure), and a worker
writes its table when a stream opens or closes (real files in a run dir)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.sessions import shared
from gateway.sessions.registry import Registry
from gateway.sessions.shared import WorkerTables, merged, table_of

pytestmark = pytest.mark.unit

_row = st.tuples(st.sampled_from(["p", "q"]), st.sampled_from(["a", "b", "c"]), st.integers(0, 50),
                 st.integers(0, 10**13))
_tables = st.lists(st.fixed_dictionaries({
    "transports": st.dictionaries(st.sampled_from(["websocket", "sse", "ndjson"]), st.integers(0, 100)),
    "sessions": st.lists(_row, max_size=6, unique_by=lambda r: (r[0], r[1])),
}), max_size=4)


@given(_tables)
def test_counts_add_up_and_last_seen_is_the_freshest(tables: list[dict[str, Any]]) -> None:
    live = merged(tables)
    for transport in ("websocket", "sse", "ndjson"):
        assert live.by_transport[transport] == sum(t["transports"].get(transport, 0) for t in tables)
    keys = {(p, s) for t in tables for p, s, _, _ in t["sessions"]}
    assert set(live.sessions) == keys
    for key, (connections, last_seen) in live.sessions.items():
        rows = [r for t in tables for r in t["sessions"] if (r[0], r[1]) == key]
        assert connections == sum(r[2] for r in rows)
        assert last_seen == max(r[3] for r in rows)


def test_a_registry_round_trips_through_its_table() -> None:
    registry = Registry(max_connections=10, evict=lambda _p, _s: "absent")
    registry.connect("p", "a", "websocket")
    registry.connect("p", "a", "sse")
    registry.touch("p", "b")
    live = merged([table_of(registry)])
    assert live.by_transport == {"websocket": 1, "sse": 1}
    assert live.sessions[("p", "a")][0] == 2 and live.sessions[("p", "b")][0] == 0


def _registry() -> Registry:
    return Registry(max_connections=10, evict=lambda _p, _s: "absent")


@pytest.mark.anyio
async def test_a_stream_opening_or_closing_is_written_at_once(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """With the period out of reach (an hour), only the change itself can carry the count to the
    other workers: a loaded machine delays it by the worker's wait for a CPU, not by a period."""
    monkeypatch.setattr(shared, "SHARE_INTERVAL", 3600.0)
    registry = _registry()
    tables = WorkerTables(registry, tmp_path, 0)
    registry.on_change.append(tables.changed)
    other = WorkerTables(_registry(), tmp_path, 1)

    async def wait_for(connections: int) -> None:
        with anyio.fail_after(30):  # a hang guard, far below the period
            while merged(other.others()).sessions.get(("p", "a"), (0, 0))[0] != connections or not other.others():
                await anyio.sleep(0.01)

    async with anyio.create_task_group() as tg:
        tg.start_soon(tables.run)
        await wait_for(0)  # the first write, before any stream
        first = registry.connect("p", "a", "websocket")
        await wait_for(1)
        registry.connect("p", "a", "sse")
        await wait_for(2)
        registry.disconnect(first)
        await wait_for(1)
        tg.cancel_scope.cancel()
