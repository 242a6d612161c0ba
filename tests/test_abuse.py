"""Hostile clients at the connection level: ping floods, slow headers and bodies, stalled readers."""

from __future__ import annotations

import contextlib
import os
import socket
import struct
from pathlib import Path

import anyio
import pytest
import websockets

from tests.conftest import run_gateway
from tests.runner_helpers import stored
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


def read_to_end(sock: socket.socket) -> bytes:
    """Read until the server closes (EOF) or aborts (reset): what was in flight."""
    data = bytearray()
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(1 << 20):
            data += chunk
    return bytes(data)


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


async def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.settimeout(20)
    return sock


async def test_slow_headers_silent_connections_and_slow_bodies_are_cut(tmp_path: Path) -> None:
    """Slowloris: partial headers, no bytes at all, or a body that stops arriving: each is aborted
    after GATEWAY_HEADER_TIMEOUT, while a stream that outlives it stays open."""
    async with run_gateway(tmp_path / "state", header_timeout=0.5) as gw:
        await gw.append("s", [{"type": "X"}])
        port = gw.settings.port
        partial = await connect(port)
        partial.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        silent = await connect(port)
        body = await connect(port)
        body.sendall(b"POST /v1/projects/p/sessions/s/events HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Content-Type: application/x-ndjson\r\nContent-Length: 1000\r\n\r\n{\"type\":")
        async with gw.http.stream("GET", gw.events_url("s") + "?follow=1") as stream:
            for sock in (partial, silent, body):  # each one closed by the server, not by the test
                await anyio.to_thread.run_sync(read_to_end, sock)
                sock.close()
            chunks = stream.aiter_bytes()
            assert b'"type":"X"' in await chunks.__anext__()
            await anyio.sleep(1)  # twice the header timeout: a stream is not a slow request
            await gw.append("s", [{"type": "Y"}])
            assert b'"type":"Y"' in await chunks.__anext__()
        assert [e["type"] for e in stored(gw, "s")] == ["X", "Y"]


async def test_a_websocket_outlives_the_header_timeout(tmp_path: Path) -> None:
    """The upgrade request leaves h11 in SEND_BODY: the read timer must not go on to cut the
    WebSocket that the connection became (it did, with a reset, GATEWAY_HEADER_TIMEOUT after connect)."""
    async with run_gateway(tmp_path / "state", header_timeout=0.5) as gw:
        await gw.append("s", [{"type": "X"}])
        async with websockets.connect(gw.events_url("s", ws=True)) as ws:
            while b'"control":"live"' not in str(await ws.recv()).encode():
                pass
            await anyio.sleep(1.5)  # three header timeouts
            await gw.append("s", [{"type": "Y"}])
            with anyio.fail_after(10):
                assert '"type":"Y"' in str(await ws.recv())


async def test_every_connection_counts_against_the_limit(tmp_path: Path) -> None:
    """Idle connections are connections: a request on one past GATEWAY_MAX_CONNECTIONS gets 503 and
    its connection is closed (idle ones themselves last GATEWAY_HEADER_TIMEOUT at most)."""
    async with run_gateway(tmp_path / "state", max_connections=4, header_timeout=30) as gw:
        idle = [await connect(gw.settings.port) for _ in range(4)]
        try:
            extra = await connect(gw.settings.port)
            extra.sendall(b"GET /v1/projects/p/sessions HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            answer = await anyio.to_thread.run_sync(read_to_end, extra)
            assert answer.startswith(b"HTTP/1.1 503") and b"too_many_connections" in answer, answer
            extra.close()
        finally:
            for sock in idle:
                sock.close()
        with anyio.fail_after(10):
            while (await gw.http.get(gw.base + "/v1/projects/p/sessions")).status_code != 200:
                await anyio.sleep(0.05)  # the closed idle ones leave room again



@pytest.mark.parametrize("accept", ["text/event-stream", "application/x-ndjson"])
async def test_stalled_sse_and_ndjson_clients_are_aborted(tmp_path: Path, accept: str,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    """A client that stops reading an SSE or NDJSON stream is cut at the TCP level once the send
    timeout passes (as WebSocket clients are), and its response ends without an error."""
    async with run_gateway(tmp_path / "state", send_timeout=0.5) as gw:
        pad = "x" * 20_000
        for start in range(0, 600, 100):  # ~12 MB: far more than the socket buffers hold
            await gw.append("s", [{"type": "X", "n": n, "pad": pad} for n in range(start, start + 100)])
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", gw.settings.port))
        sock.sendall(f"GET /v1/projects/p/sessions/s/events?follow=1 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     f"Accept: {accept}\r\n\r\n".encode())
        try:
            with anyio.fail_after(20):
                while not gw.gateway.registry.total:  # the stream opens,
                    await anyio.sleep(0.01)
                while gw.gateway.registry.total:  # and is closed as too slow
                    await anyio.sleep(0.05)
            sock.settimeout(10)
            received = await anyio.to_thread.run_sync(read_to_end, sock)
            assert len(received) < 6_000_000, "the stalled client got the rest only because it was not cut"
        finally:
            sock.close()
    assert "without completing response" not in caplog.text
