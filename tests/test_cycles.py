"""Closed streams are freed when they close, not when the garbage collector next runs (issue 12).

With the collector off, streams of every transport are opened and closed: ended by the client,
dropped abruptly, and cut as stalled. Whatever of the gateway's objects (its classes' instances,
and frames and coroutines of its code) a forced collection then frees was cyclic garbage left by
those streams.
"""

from __future__ import annotations

import gc
import socket
import struct
from collections import Counter
from pathlib import Path
from types import CoroutineType, FrameType
from typing import Any

import anyio
import pytest
import websockets

import gateway
from tests.conftest import RunningGateway, run_gateway
from tests.stalled import stalled_client

pytestmark = [pytest.mark.anyio, pytest.mark.server]

ROUNDS = 150
STALLED = 4
GATEWAY_DIR = str(Path(gateway.__file__).parent)


def ours() -> Counter[str]:
    """Live objects of the gateway: instances of its classes, and frames and coroutines of its code."""
    counts: Counter[str] = Counter()
    for obj in gc.get_objects():
        kind = type(obj)
        if str(getattr(kind, "__module__", "")).startswith("gateway."):
            counts[kind.__qualname__] += 1
            continue
        code = obj.f_code if kind is FrameType else obj.cr_code if kind is CoroutineType else None
        if code is not None and code.co_filename.startswith(GATEWAY_DIR):
            counts[f"{kind.__name__} {code.co_name}"] += 1
    return counts


def abrupt(sock: socket.socket) -> None:
    """Drop the connection with a reset, as a client that vanishes does."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


async def stalled_http(gw: RunningGateway, accept: str) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    await anyio.to_thread.run_sync(sock.connect, ("127.0.0.1", gw.settings.port))
    sock.sendall(f"GET /v1/projects/p/sessions/big/events?follow=1 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                 f"Accept: {accept}\r\n\r\n".encode())
    return sock


async def one_round(gw: RunningGateway) -> None:
    url = gw.events_url("s", ws=True) + "?follow=1"
    async with websockets.connect(url) as ws:
        await ws.recv()
        await ws.recv()
    for accept in ("text/event-stream", "application/x-ndjson"):
        headers = {"accept": accept}
        async with gw.http.stream("GET", gw.events_url("s") + "?follow=1", headers=headers) as resp:
            async for _ in resp.aiter_raw():
                break
    abrupt(await stalled_client(url))
    sock = await stalled_http(gw, "text/event-stream")
    await anyio.sleep(0.01)
    abrupt(sock)


async def stalls(gw: RunningGateway) -> list[socket.socket]:
    url = gw.events_url("big", ws=True) + "?follow=1"
    socks = [await stalled_client(url) for _ in range(STALLED)]
    for accept in ("text/event-stream", "application/x-ndjson"):
        socks += [await stalled_http(gw, accept) for _ in range(STALLED)]
    return socks


async def settle(gw: RunningGateway) -> None:
    with anyio.fail_after(60):
        while gw.gateway.registry.total or gw.server.server_state.connections:
            await anyio.sleep(0.05)
    await anyio.sleep(0.2)


async def test_closed_streams_leave_no_cyclic_garbage(tmp_path: Path) -> None:
    async with run_gateway(tmp_path / "state", send_timeout=0.5) as gw:
        await gw.append("s", [{"type": "X", "n": n} for n in range(10)])
        pad = "x" * 20_000
        for start in range(0, 600, 100):  # ~12 MB: more than the socket buffers of a stalled client hold
            await gw.append("big", [{"type": "X", "n": n, "pad": pad} for n in range(start, start + 100)])
        await one_round(gw)  # first use: imports, caches, pools
        socks = await stalls(gw)
        await settle(gw)
        for sock in socks:
            sock.close()
        await settle(gw)
        gc.collect()
        gc.disable()
        try:
            before = ours()
            socks = await stalls(gw)
            for _ in range(ROUNDS):
                await one_round(gw)
            await settle(gw)
            for sock in socks:
                sock.close()
            await settle(gw)
            held = ours()
            gc.collect()
            freed = held - ours()
        finally:
            gc.enable()
    grown: dict[str, Any] = dict((held - before).most_common(12))
    print(f"freed only by the collector: {sum(freed.values())} {dict(freed.most_common(12))}; grown {grown}")
    assert sum(freed.values()) < ROUNDS, f"closed streams left cyclic garbage: {dict(freed.most_common(12))}"
