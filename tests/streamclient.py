"""Small protocol-checking readers used by the stream tests (WebSocket and SSE)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import websockets
from websockets.exceptions import ConnectionClosed


@dataclass
class Seen:
    """What a reader took from a stream, checked line by line against PROTOCOL §4."""

    cursor: str | None = None
    last_seq: int = 0
    events: list[dict[str, Any]] = field(default_factory=list)
    seqs: list[int] = field(default_factory=list)
    controls: list[dict[str, Any]] = field(default_factory=list)
    frames: list[str] = field(default_factory=list)

    def take_line(self, line: str) -> dict[str, Any]:
        obj: dict[str, Any] = orjson.loads(line)
        if "events" in obj:
            assert line.startswith('{"first":%d,"last":%d,' % (obj["first"], obj["last"])), line[:80]
            assert obj["last"] - obj["first"] + 1 == len(obj["events"])
            assert obj["cursor"].endswith(f"-{obj['last']}")
            self.seqs.extend(range(obj["first"], obj["last"] + 1))
            self.events.extend(obj["events"])
            self.cursor, self.last_seq = obj["cursor"], obj["last"]
        else:
            self.controls.append(obj)
            if obj.get("control") == "skipped":
                self.seqs.append(obj["seq"])
                self.cursor, self.last_seq = obj["cursor"], obj["seq"]
        return obj

    def take_frame(self, frame: str | bytes) -> list[dict[str, Any]]:
        assert isinstance(frame, str), "frames are text"
        self.frames.append(frame)
        return [self.take_line(line) for line in frame.split("\n")]

    def control(self, name: str) -> list[dict[str, Any]]:
        return [c for c in self.controls if c.get("control") == name]


async def ws_read_all(url: str, seen: Seen | None = None, **connect: Any) -> tuple[Seen, int | None, str]:
    """Read a whole `follow=0` stream; returns what was seen and the close code and reason."""
    seen = seen or Seen()
    async with websockets.connect(url, compression=None, max_size=None, **connect) as ws:
        with contextlib.suppress(ConnectionClosed):
            async for frame in ws:
                seen.take_frame(frame)
    return seen, ws.close_code, ws.close_reason or ""


async def sse_read(http: httpx.AsyncClient, url: str, headers: dict[str, str] | None = None,
                   limit: int | None = None, events: list[tuple[str, dict[str, Any]]] | None = None,
                   ) -> tuple[list[tuple[str, dict[str, Any]]], list[str]]:
    """(id, event) pairs and comment lines of an SSE stream, up to `limit` events.

    Pass `events` to keep what was read even if the call is cancelled.
    """
    events = [] if events is None else events
    start = len(events)
    comments: list[str] = []
    async with http.stream("GET", url, headers={"accept": "text/event-stream", **(headers or {})}) as resp:
        assert resp.status_code == 200, await resp.aread()
        assert resp.headers["content-type"].startswith("text/event-stream")
        ident: str | None = None
        async for line in resp.aiter_lines():
            if line.startswith(":"):
                comments.append(line[1:].strip())
            elif line.startswith("id: "):
                ident = line[4:]
            elif line.startswith("data: "):
                assert ident is not None
                events.append((ident, orjson.loads(line[6:])))
                ident = None
                if limit is not None and len(events) - start >= limit:
                    break
    return events, comments
