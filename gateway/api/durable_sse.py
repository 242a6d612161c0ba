"""A Durable Streams SSE response: `event: data` then `event: control` per read, then live.

The stream is read from the client's position like every reader of the gateway reads a log, one
chunk per event and only once the client took the last one; at the tail the response waits for
the stream's own log or its state to change. It ends once the stream is closed and read to its
end, after `SSE_SECONDS` (the protocol asks for about a minute, so caches can collapse
readers), when the client leaves or when the gateway drains.
"""

from __future__ import annotations

import random
from typing import Any

import anyio
from starlette.types import Message, Receive, Scope, Send

from gateway.clock import now_ms
from gateway.ds.protocol import format_offset, response_cursor, sse_base64
from gateway.ds.records import sse_control, sse_data
from gateway.ds.streams import DurableStreams, Stream
from gateway.runtime import Gateway

SSE_SECONDS = 60.0
READ_BYTES = 1024 * 1024
SECURITY = [(b"x-content-type-options", b"nosniff"), (b"cross-origin-resource-policy", b"cross-origin")]


class DsSse:
    """The response; besides its pump, one task notices the client leaving and one the stream's
    state moving (closure), which ends the pump's wait for data."""

    def __init__(self, gw: Gateway, ds: DurableStreams, stream: Stream, position: int, cursor: str | None) -> None:
        self.gw, self.ds, self.stream, self.position, self.cursor = gw, ds, stream, position, cursor
        self.encoded = sse_base64(stream.content_type)
        self.status_code = 200
        self._sent = gw.metrics.bytes_sent.labels("ds-sse")
        self._waiting: anyio.CancelScope | None = None
        self._moved = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache"), *SECURITY]
        if self.encoded:
            headers.append((b"stream-sse-data-encoding", b"base64"))
        origin = dict(scope["headers"]).get(b"origin")
        if origin and (origin.decode() in self.gw.settings.allowed_origins or "*" in self.gw.settings.allowed_origins):
            headers += [(b"access-control-allow-origin", origin), (b"vary", b"Origin")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        registry = self.gw.registry
        conn = registry.connect(scope["path_params"]["project"], self.stream.key, "ds-sse")
        try:
            async with anyio.create_task_group() as tg:
                def stop() -> None:
                    tg.cancel_scope.cancel()

                async def left() -> None:
                    message: Message = {"type": ""}
                    while message["type"] != "http.disconnect":
                        message = await receive()
                    stop()

                self.gw.draining.watch(stop)
                tg.start_soon(left)
                tg.start_soon(self.state)
                try:
                    with anyio.move_on_after(SSE_SECONDS):
                        await self.pump(send)
                finally:
                    self.gw.draining.unwatch(stop)
                    tg.cancel_scope.cancel()
        finally:
            registry.disconnect(conn)
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def state(self) -> None:
        log = self.stream.meta_log
        if log is None:
            return  # a session with no writer state: nothing there can end the stream
        version = log.version
        while True:
            await log.wait_change(version)
            version, self._moved = log.version, True
            if self._waiting is not None:
                self._waiting.cancel()

    async def pump(self, send: Send) -> None:
        ds, stream = self.ds, self.stream
        caught_up = False
        reader = ds.reader(stream, self.position)
        while True:
            version = stream.data.version
            parts = await reader.read(READ_BYTES)
            if reader.reset:
                return  # a session was deleted under the response: the client's offset is gone with it
            block = b""
            if parts:
                payload = stream.body(parts)
                block = sse_data(payload, encoded=self.encoded)
                self._sent.inc(len(payload))
                self.position, caught_up = reader.position, False
            at_tail = self.position >= stream.tail
            closed = stream.meta.closed and at_tail
            if parts or (at_tail and not caught_up) or closed:  # a data event and its control go out together
                block += sse_control(self.control(at_tail, closed))
                await send({"type": "http.response.body", "body": block, "more_body": True})
            if closed:
                return
            if at_tail:
                caught_up = True
                if not self._moved:
                    with anyio.CancelScope() as self._waiting:
                        await stream.data.wait_change(version)
                    self._waiting = None
            if self._moved:
                self._moved = False
                await ds.refresh(stream, poll=False)

    def control(self, at_tail: bool, closed: bool) -> dict[str, Any]:
        fields: dict[str, Any] = {"streamNextOffset": format_offset(self.stream.meta.incarnation, self.position)}
        if closed:
            fields["streamClosed"] = True
            return fields
        self.cursor = response_cursor(self.cursor, now_ms(), random.randint(1, 180))
        fields["streamCursor"] = self.cursor
        if at_tail:
            fields["upToDate"] = True
        return fields
