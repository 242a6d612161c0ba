"""SSE and NDJSON transports: a streamed HTTP response driven by the same pump as WebSocket.

A plain ASGI response (not Starlette's StreamingResponse) so the stream can put a timeout on
each send, watch for the client leaving, end cleanly when the gateway drains, and abort a client
that stopped reading once GATEWAY_SEND_TIMEOUT passes (`gateway.transports.uvicorn_http`).
"""

from __future__ import annotations

import anyio
from starlette.types import Receive, Scope, Send

from gateway.sessions.registry import Connection
from gateway.stream.ending import Together
from gateway.stream.framing import Encoder, Item, http_chunk
from gateway.stream.pump import pump
from gateway.stream.reader import Reader
from gateway.transports.context import StreamContext


class EventStreamResponse:
    def __init__(
        self,
        ctx: StreamContext,
        conn: Connection,
        reader: Reader,
        encoder: Encoder,
        *,
        media_type: str,
        follow: bool,
        preamble: bytes = b"",
    ) -> None:
        self.ctx, self.conn, self.reader, self.encoder = ctx, conn, reader, encoder
        self.media_type, self.follow, self.preamble = media_type, follow, preamble

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        limits = self.ctx.limits
        track = self.ctx.track(self.conn)
        outcome, kind = "end of log", "end"

        async def send_chunk(data: bytes) -> None:
            await send({"type": "http.response.body", "body": data, "more_body": True})

        guard = track.guard
        send_body = guard.wrap(send_chunk)

        together = Together()  # the pump and the client watch end by returning (no cycles)

        async def until_client_leaves() -> None:
            nonlocal outcome, kind
            while (await receive())["type"] != "http.disconnect":
                pass
            outcome, kind = "client gone", "client"
            together.stop()

        def on_drain() -> None:
            nonlocal outcome, kind
            outcome, kind = "server shutting down", "shutdown"
            together.stop()

        transport = scope.get("extensions", {}).get("gateway.transport", {})
        track.opened()
        try:
            await send({
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", self.media_type.encode()),
                    (b"cache-control", b"no-cache"),
                    (b"x-accel-buffering", b"no"),
                ],
            })
            async with anyio.create_task_group() as tg:
                together.start(tg, until_client_leaves)
                self.ctx.draining.watch(on_drain)  # a callback, not a task per stream
                try:
                    with together.scope(), guard.scope:
                        # the hub, for a raw follower of a chunked response (a run's stream keeps its own reader)
                        shared = self.ctx.hubs.shared(self.reader, self.conn.transport, self._shared_frame,
                                                      transport.get("shared_writer"), track.stats, follow=self.follow)
                        if self.preamble:
                            await send_body(self.preamble)
                        await pump(self.reader, self.encoder, send_body, follow=self.follow,
                                   frame_bytes=limits.frame_bytes, heartbeats=self.ctx.heartbeats,
                                   stats=track.stats, shared=shared)
                    if guard.timed_out:
                        outcome, kind = f"client too slow: no data taken for {limits.send_timeout:g}s", "slow"
                except OSError:
                    outcome, kind = "client gone", "client"
                finally:
                    self.ctx.draining.unwatch(on_drain)
                together.stop()
            if kind == "slow":
                await _cut(scope, receive)
            elif kind != "client":
                with anyio.move_on_after(1):
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:
            outcome, kind = "client gone", "client"
        finally:
            track.closed(kind, outcome)

    def _shared_frame(self, epoch: str, items: list[Item]) -> bytes:
        return http_chunk(self.encoder.items(epoch, items))


async def _cut(scope: Scope, receive: Receive) -> None:
    """Abort a client that stopped reading (its kernel buffers are freed at once), and wait for
    the server to see it gone, so the response ends as a disconnect rather than unfinished."""
    abort = scope.get("extensions", {}).get("gateway.transport", {}).get("abort")
    if abort is None:
        return
    abort()
    with anyio.move_on_after(1):
        while (await receive())["type"] != "http.disconnect":
            pass
