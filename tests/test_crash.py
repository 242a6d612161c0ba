"""A gateway killed (SIGKILL) while appending: after a restart every append is whole or absent.

Whether a kill lands in the middle of a write is up to the scheduler, so the test kills several
times under a stream of large appends; the invariant is checked after each restart either way:
every acknowledged append is there, whole, and no append is there in part.
"""

from __future__ import annotations

import contextlib
import random
import signal
from collections import Counter
from pathlib import Path

import anyio
import httpx
import orjson
import pytest

from tests.conftest import TLS, spawn_gateway

pytestmark = [pytest.mark.anyio, pytest.mark.server]

BATCH = 400  # events per append: ~0.5 MB, written by a worker thread
CYCLES = 4


async def test_appends_survive_sigkill_whole_or_not_at_all(tmp_path: Path) -> None:
    state = tmp_path / "state"
    acked: set[int] = set()
    next_batch = 0
    pad = "c" * 1200
    for _cycle in range(CYCLES):
        async with (spawn_gateway(state, GATEWAY_FSYNC="always") as gp,
                    httpx.AsyncClient(verify=TLS, timeout=30) as http):

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

    async with spawn_gateway(state) as gp, httpx.AsyncClient(verify=TLS, timeout=60) as http:
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


SESSIONS = 24


async def test_acknowledged_appends_of_many_sessions_survive_sigkill_in_order(tmp_path: Path) -> None:
    """Many sessions append at once under fsync=always (their syncs shared by the commit cycle);
    the gateway is killed after a random number of acknowledgements, twice. Every session's log
    then holds every acknowledged event, in the order it was sent, and nothing else before it."""
    state = tmp_path / "state"
    rng = random.Random(SESSIONS)
    acked = [0] * SESSIONS  # events acknowledged per session, sent one after another
    for _cycle in range(2):
        async with (spawn_gateway(state, GATEWAY_FSYNC="always") as gp,
                    httpx.AsyncClient(verify=TLS, timeout=30) as http):

            async def writer(s: int) -> None:
                with contextlib.suppress(httpx.HTTPError):
                    while True:
                        resp = await http.post(gp.events_url(f"s{s}"), json={"type": "X", "s": s, "n": acked[s]})
                        assert resp.status_code == 201, resp.text
                        acked[s] += 1

            kill_after = sum(acked) + rng.randrange(50, 400)
            async with anyio.create_task_group() as tg:
                for s in range(SESSIONS):
                    tg.start_soon(writer, s)
                with anyio.fail_after(120):
                    while sum(acked) < kill_after:
                        await anyio.sleep(0.005)
                gp.proc.send_signal(signal.SIGKILL)
                await anyio.to_thread.run_sync(gp.proc.wait)
                tg.cancel_scope.cancel()
        # The next cycle goes on from what each log holds (an append in flight may have landed).
        for s in range(SESSIONS):
            log = state / "sessions" / f"s{s}" / "agui-events.jsonl"
            data = log.read_bytes() if log.exists() else b""
            whole = data[: data.rfind(b"\n") + 1]  # a torn last line is the gateway's to cut on restart
            stored = [orjson.loads(line)["n"] for line in whole.splitlines()]
            assert stored == list(range(len(stored))), f"s{s}: in order, nothing else"
            assert len(stored) >= acked[s], f"s{s}: {acked[s]} acknowledged, {len(stored)} stored"
            acked[s] = len(stored)
    assert all(acked), "every session appended"
