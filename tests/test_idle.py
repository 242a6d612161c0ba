"""What an idle follower holds: no task of its own beyond its connection's, and few bytes.

Followers are raw sockets that complete the WebSocket handshake and then read nothing (a short
replay fits in their buffers): the client side allocates next to nothing, so what tracemalloc sees
grow is the server's. bench/idle.py measures the same at 10,000 followers as RSS.
"""

from __future__ import annotations

import asyncio
import socket
import tracemalloc
from pathlib import Path

import anyio
import pytest

from tests.conftest import run_gateway
from tests.stalled import stalled_client

pytestmark = [pytest.mark.anyio, pytest.mark.server]

FOLLOWERS = 200
BYTES_PER_FOLLOWER = 21_000
"""Python memory per idle WebSocket follower (tracemalloc): about 18.6 KB now; 26.5 KB before the
hub member's event became a future, the handshake's parser and headers were dropped, the watchdog
shared the pump's cancel scope and the per-stream objects got slots; 41 KB before the follower's
route skipped starlette's router, its drain watch became a callback and its pump a plain task."""
TASKS_PER_FOLLOWER = 2
"""uvicorn's task running the handler (which reads the client), and the stream's pump."""


async def test_idle_websocket_followers_hold_few_bytes_and_tasks(tmp_path: Path) -> None:
    async with run_gateway(tmp_path / "state") as gw:
        await gw.append("s", [{"type": "X", "n": n} for n in range(20)])
        hubs = gw.gateway.streams.hubs
        await anyio.sleep(0.2)
        tasks_before = len(asyncio.all_tasks())
        tracemalloc.start()
        socks: list[socket.socket] = []
        try:
            before = tracemalloc.take_snapshot()
            for _ in range(FOLLOWERS):
                socks.append(await stalled_client(gw.events_url("s", ws=True), rcvbuf=65536))
            with anyio.fail_after(30):  # every follower caught up and parked in the session's hub
                while sum(len(h.members) for h in hubs._hubs.values()) < FOLLOWERS:
                    await anyio.sleep(0.05)
            await anyio.sleep(0.2)
            after = tracemalloc.take_snapshot()
            tasks = len(asyncio.all_tasks()) - tasks_before
        finally:
            tracemalloc.stop()
            for sock in socks:
                sock.close()
        grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
        print(f"{grown / FOLLOWERS:.0f} bytes and {tasks / FOLLOWERS:.2f} tasks per idle follower")
        assert tasks <= TASKS_PER_FOLLOWER * FOLLOWERS + 2, tasks
        assert grown / FOLLOWERS < BYTES_PER_FOLLOWER, f"{grown / FOLLOWERS:.0f} bytes per idle follower"
