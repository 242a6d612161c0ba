"""Hostile clients at the connection level: ping floods, slow headers and bodies, stalled readers."""

from __future__ import annotations

import contextlib
import os
import socket
import struct
from pathlib import Path

import anyio
import pytest

from tests.conftest import run_gateway
from tests.stalled import stalled_client

pytestmark = [pytest.mark.anyio, pytest.mark.server]


def ping_frame(payload: bytes) -> bytes:
    """A masked client PING frame (RFC 6455 §5.5.2) with a payload of at most 125 bytes."""
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return struct.pack("!BB", 0x89, 0x80 | len(payload)) + mask + masked


def flood(sock: socket.socket, pings: int) -> int:
    """Send pings without reading the pongs; the number sent before the server cut the connection."""
    frame = ping_frame(b"p" * 125)
    batch = frame * 100
    sent = 0
    try:
        while sent < pings:
            sock.sendall(batch)
            sent += 100
    except (ConnectionResetError, BrokenPipeError):
        pass
    return sent


def read_to_end(sock: socket.socket) -> int:
    """Read until the server closes (EOF) or aborts (reset); what was in flight, in bytes."""
    total = 0
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(1 << 20):
            total += len(chunk)
    return total


async def test_ping_flood_from_a_peer_that_does_not_read_is_closed(tmp_path: Path) -> None:
    """Pongs queue only up to a bound while the peer reads nothing; then the connection is closed
    (1008, then aborted) and its stream deregistered, instead of buffering every pong."""
    async with run_gateway(tmp_path / "state", heartbeat_interval=60) as gw:
        await gw.append("s", [{"type": "X"}])
        sock = await stalled_client(gw.events_url("s", ws=True) + "?follow=1")
        try:
            # 40,000 pongs (5 MB) is far more than the socket buffers on both sides hold
            await anyio.to_thread.run_sync(flood, sock, 40_000)
            with anyio.fail_after(20):  # keepalive is 60 s away: only the flood bound can close it
                while gw.gateway.registry.total:
                    await anyio.sleep(0.05)
            sock.settimeout(10)
            await anyio.to_thread.run_sync(read_to_end, sock)
        finally:
            sock.close()
