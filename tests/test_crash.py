"""A gateway killed (SIGKILL) while appending: after a restart every append is whole or absent.

Whether a kill lands in the middle of a write is up to the scheduler, so the test kills several
times under a stream of large appends; the invariant is checked after each restart either way:
every acknowledged append is there, whole, and no append is there in part.
"""

from __future__ import annotations

import contextlib
import signal
from collections import Counter
from pathlib import Path

import anyio
import httpx
import orjson
import pytest

from tests.conftest import spawn_gateway

pytestmark = [pytest.mark.anyio, pytest.mark.server]

BATCH = 400  # events per append: ~0.5 MB, written by a worker thread
CYCLES = 4


async def test_appends_survive_sigkill_whole_or_not_at_all(tmp_path: Path) -> None:
    state = tmp_path / "state"
    acked: set[int] = set()
    next_batch = 0
    pad = "c" * 1200
    for _cycle in range(CYCLES):
        async with spawn_gateway(state, GATEWAY_FSYNC="always") as gp, httpx.AsyncClient(timeout=30) as http:

            async def writer() -> None:
                nonlocal next_batch
                with contextlib.suppress(httpx.HTTPError):
                    while True:
                        b = next_batch
                        next_batch += 1
                        events = [{"type": "X", "b": b, "i": i, "pad": pad} for i in range(BATCH)]
                        resp = await http.post(gp.events_url("s"), json=events)
                        assert resp.status_code == 201, resp.text
                        acked.add(b)

            async with anyio.create_task_group() as tg:
                tg.start_soon(writer)
                tg.start_soon(writer)
                with anyio.fail_after(60):
                    start = len(acked)
                    while len(acked) < start + 3:
                        await anyio.sleep(0.01)
                gp.proc.send_signal(signal.SIGKILL)
                await anyio.to_thread.run_sync(gp.proc.wait)
                tg.cancel_scope.cancel()

    async with spawn_gateway(state) as gp, httpx.AsyncClient(timeout=60) as http:
        resp = await http.get(gp.events_url("s"))  # NDJSON, follow=0
        rows = [orjson.loads(line) for line in resp.content.splitlines()]
    assert [r["seq"] for r in rows] == list(range(1, len(rows) + 1))
    assert all("event" in r for r in rows), "no line of a torn append is delivered"
    per_batch = Counter(r["event"]["b"] for r in rows)
    assert acked <= set(per_batch), "every acknowledged append survived"
    assert all(n == BATCH for n in per_batch.values()), "an append is whole or absent"
    torn = sorted((state / "sessions" / "s").glob("agui-events.jsonl.torn-*"))
    for aside in torn:  # what was cut is kept aside, never lost
        assert aside.stat().st_size > 0
