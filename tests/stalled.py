"""A WebSocket client that completes the handshake and then never reads: the worst slow client."""

from __future__ import annotations

import base64
import os
import socket
from urllib.parse import urlsplit

import anyio


async def stalled_client(url: str, rcvbuf: int = 4096) -> socket.socket:
    """Connect, upgrade, read the 101 response, then stop reading for good (the caller closes)."""
    key = base64.b64encode(os.urandom(16)).decode()
    return await stalled_http_client(url, f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                                          "Sec-WebSocket-Version: 13", b"HTTP/1.1 101", rcvbuf)


async def stalled_http_client(url: str, headers: str, status: bytes = b"HTTP/1.1 200",
                              rcvbuf: int = 4096) -> socket.socket:
    """GET `url` with `headers` (CRLF-separated), read the response head, then stop reading for good."""
    parts = urlsplit(url)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    await anyio.to_thread.run_sync(_connect, sock, parts.hostname or "127.0.0.1", parts.port or 80)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    request = f"GET {path} HTTP/1.1\r\nHost: {parts.netloc}\r\n{headers}\r\n\r\n"
    sock.setblocking(True)
    sock.sendall(request.encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = await anyio.to_thread.run_sync(sock.recv, 1)
        if not chunk:
            raise ConnectionError("closed during handshake")
        head += chunk
    assert head.startswith(status), head
    return sock


def _connect(sock: socket.socket, host: str, port: int) -> None:
    sock.setblocking(True)
    sock.connect((host, port))
