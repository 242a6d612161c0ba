"""A lean WebSocket load client for the live scenarios of bench/peers.py (fan-out and idle).

Python's `websockets` client costs more per message than the servers under test, so with 1000
followers at 200 events/s (200,000 frames/s) the clients, not the server, would be measured.
This client is an asyncio protocol that does the handshake, reads unmasked server frames, answers
pings, and takes from each text frame only what the bench needs, with one regex: the `n` and the
send time `t` of each event (events are `{"type":"CUSTOM","name":"tick","value":{"n":..,"t":..}}`;
`t` is CLOCK_MONOTONIC, one clock for every process of the machine). Followers run in several
client processes so that the clients are not the bottleneck either.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import struct
import time
from array import array
from dataclasses import dataclass, field
from multiprocessing.connection import Connection

TICK = re.compile(rb'"n":(\d+),"t":([0-9.]+)')


@dataclass
class Tally:
    """What the followers of one client process took."""

    latencies: array = field(default_factory=lambda: array("d"))
    lost: int = 0
    dup: int = 0
    followers: int = 0
    cpu: float = 0.0  # CPU-seconds of this process from "ready" to the tally


class Follower(asyncio.Protocol):
    def __init__(self, path: str, host: str, ready: asyncio.Future[None], live_marker: bytes | None,
                 tally: Tally, events: int) -> None:
        self.path, self.host, self.ready, self.live_marker = path, host, ready, live_marker
        self.tally, self.events = tally, events
        self.seen = bytearray(events)
        self.buf = bytearray()
        self.open = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        key = base64.b64encode(os.urandom(16)).decode()
        transport.write((f"GET {self.path} HTTP/1.1\r\nHost: {self.host}\r\nUpgrade: websocket\r\n"
                         f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                         "Sec-WebSocket-Version: 13\r\n\r\n").encode())

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        buf = self.buf
        buf += data
        if not self.open:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            if not buf.startswith(b"HTTP/1.1 101"):
                self._settle(ConnectionError(bytes(buf[:80]).decode(errors="replace")))
                return
            del buf[: end + 4]
            self.open = True
            if self.live_marker is None:
                self._settle(None)
        while len(buf) >= 2:
            n, head = buf[1] & 0x7F, 2
            if n == 126:
                if len(buf) < 4:
                    return
                n, head = struct.unpack_from("!H", buf, 2)[0], 4
            elif n == 127:
                if len(buf) < 10:
                    return
                n, head = struct.unpack_from("!Q", buf, 2)[0], 10
            if len(buf) < head + n:
                return
            opcode = buf[0] & 0x0F
            payload = bytes(buf[head : head + n])
            del buf[: head + n]
            if opcode == 1:
                self._text(payload, now)
            elif opcode == 9:
                self._send(0xA, payload)

    def _text(self, payload: bytes, now: float) -> None:
        if self.live_marker is not None and not self.ready.done() and self.live_marker in payload:
            self._settle(None)
        seen, lat = self.seen, self.tally.latencies
        for m in TICK.finditer(payload):
            n = int(m[1])
            if n < len(seen):
                if seen[n]:
                    self.tally.dup += 1
                seen[n] = 1
                lat.append(now - float(m[2]))

    def _send(self, opcode: int, payload: bytes) -> None:
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        assert self.transport is not None and len(payload) < 126
        self.transport.write(bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked)

    def _settle(self, error: BaseException | None) -> None:
        if not self.ready.done():
            if error is None:
                self.ready.set_result(None)
            else:
                self.ready.set_exception(error)

    def connection_lost(self, exc: Exception | None) -> None:
        self._settle(exc or ConnectionError("closed"))


async def _follow(port: int, paths: list[str], live_marker: bytes | None, events: int, pipe: Connection) -> Tally:
    loop = asyncio.get_running_loop()
    tally = Tally(followers=len(paths))
    followers: list[Follower] = []
    for path in paths:
        ready: asyncio.Future[None] = loop.create_future()
        _, proto = await loop.create_connection(
            lambda p=path, r=ready: Follower(p, f"127.0.0.1:{port}", r, live_marker, tally, events),  # type: ignore[misc]
            "127.0.0.1", port)
        followers.append(proto)
        await ready
    pipe.send("ready")
    cpu0 = time.process_time()
    await loop.run_in_executor(None, pipe.recv)  # "done": the publisher has finished, or the hold is over
    deadline = time.monotonic() + 30
    while events and time.monotonic() < deadline and any(sum(f.seen) < events for f in followers):
        await asyncio.sleep(0.2)
    tally.lost = sum(events - sum(f.seen) for f in followers)
    tally.cpu = time.process_time() - cpu0
    for f in followers:
        if f.transport is not None:
            f.transport.abort()
    return tally


def client_process(port: int, paths: list[str], live_marker: bytes | None, events: int, pipe: Connection) -> None:
    """Connect every path, say "ready", wait for "done", then send back the tally."""
    tally = asyncio.run(_follow(port, paths, live_marker, events, pipe))
    pipe.send((tally.latencies.tobytes(), tally.lost, tally.dup, tally.followers, tally.cpu))
