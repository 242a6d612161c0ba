"""The events route over WebSocket (PROTOCOL §4): hello, event batches, live, heartbeat, close codes.

The handler runs the receive loop itself (uvicorn stops reading the socket until the app calls
`receive()`, so without it a client's close would go unseen) and the pump in a task.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import anyio
import orjson
from starlette.websockets import WebSocket, WebSocketDisconnect

from gateway.api.errors import close_reason
from gateway.api.streams import open_stream
from gateway.api.ws_appends import WebSocketAppends, is_append
from gateway.clock import now_ms
from gateway.runtime import gateway_of
from gateway.stream.ending import Together
from gateway.stream.framing import Item, WebSocketEncoder, websocket_text_frame
from gateway.stream.pump import Heartbeats, PumpStats, Send, pump

log = logging.getLogger("gateway.ws")
_CLOSE_KINDS = {1000: "end", 1001: "shutdown", 1011: "error", 4408: "slow"}  # anything else: the client left


async def events_websocket(ws: WebSocket) -> None:
    """A refusal before the stream starts (bad request, auth, limits) is an error of the app's
    table: its handler accepts and closes with the table's code."""
    gw = gateway_of(ws)
    opened = await open_stream(ws, "websocket", default_follow=True)
    req, reader, reset, conn = opened.request, opened.reader, opened.reset, opened.conn
    ctx = gw.streams
    s = ctx.limits
    track = ctx.track(conn)
    close_code, close_why = 1000, "end of log"
    ended = False  # the server side finished (end of log, slow client, drain)
    encoder = WebSocketEncoder()

    transport = ws.scope.get("extensions", {}).get("gateway.transport", {})
    fast_send = transport.get("send_text")

    async def send_raw(data: bytes) -> None:
        if fast_send is not None:
            await fast_send(data)  # the frame's bytes as they are: no decode/encode round trip
        else:
            await ws.send_text(data.decode())

    guard = track.guard
    send = guard.wrap(send_raw)
    appends = WebSocketAppends(opened.access, ws.headers, ws.query_params, send)
    together = Together()  # the pump and the receive loop end by returning (no cycles)

    async def run_pump() -> None:
        """The pump in a block that both `together.stop()` and the send watchdog end (one cancel
        scope for an idle follower to hold, not two), then the close in a block of its own."""
        nonlocal close_code, close_why, ended
        pumping = together.scope()
        guard.scope = pumping.cancel_scope
        try:
            with pumping:
                await send(encoder.hello(conn.session, reader.epoch, reset, reader.head))
                if opened.subscribe:
                    await pump(reader, encoder, send, follow=req.follow, frame_bytes=s.frame_bytes,
                               heartbeats=ctx.heartbeats, stats=track.stats,
                               shared=ctx.hubs.shared(reader, "websocket", _shared_frame,
                                                      transport.get("shared_writer"), track.stats, follow=req.follow))
                else:
                    await _answer_only(ctx.heartbeats, track.stats, send, encoder)
            if together.stopped and not guard.timed_out:
                return  # the client left or the gateway drains: the receive loop closes
            with together.scope():
                ended = True
                if guard.timed_out:
                    close_code = 4408
                    close_why = (f"client too slow: no frame taken for {s.send_timeout:g}s; "
                                 f"resume with after={reader.cursor}")
                    await _close_slow(ws, close_why)
                else:
                    await ws.close(1000, close_reason(f"end of log at {reader.cursor}"))
        except Exception as exc:
            if client_gone(exc):
                close_code, close_why = 1006, "client gone"
                return
            log.exception("stream failed", extra={"conn": conn.id, "session": conn.session})
            ended, close_code = True, 1011
            close_why = f"internal error; resume with after={reader.cursor}"
            with anyio.move_on_after(1), contextlib.suppress(WebSocketDisconnect, OSError, RuntimeError):
                await ws.close(1011, close_reason(close_why))
        finally:
            together.stop()

    drained = False

    def on_drain() -> None:
        nonlocal close_code, close_why, ended, drained
        if not ended:  # a stream already closing keeps its own close
            ended, drained = True, True
            close_code, close_why = 1001, "server shutting down"
            together.stop()

    try:
        await ws.accept()
        _keep_credential(ws)
        track.opened(after=str(req.after) if req.after else None)
        if (on_text := transport.get("on_text")) is not None:
            on_text(appends.take_now)
        if (send_now := transport.get("send_text_now")) is not None:
            appends.send_now = send_now
        ctx.draining.watch(on_drain)  # a callback, not a task per stream
        # A plain task rather than a task group's: anyio's task handle, its cancel scope and its
        # completion event would be held for every idle follower's whole life.
        pumping = asyncio.get_running_loop().create_task(run_pump())
        try:
            with together.scope():
                while True:
                    message = await ws.receive()
                    if message["type"] == "websocket.disconnect":
                        if not ended:
                            close_code, close_why = message.get("code", 1005), "client closed"
                        break
                    text = message.get("text")
                    if text and is_append(text):
                        await appends.take(text)
                    elif _is_ping(text):
                        with anyio.move_on_after(s.send_timeout):
                            await send_raw(encoder.heartbeat(now_ms()))
        finally:
            appends.close()
            ctx.draining.unwatch(on_drain)
            together.stop()
            await pumping  # it ends by returning once stopped
        if drained:
            with anyio.move_on_after(1), contextlib.suppress(WebSocketDisconnect, OSError, RuntimeError):
                await ws.close(1001, "server shutting down; reconnect with your last cursor")
    finally:
        track.closed(_CLOSE_KINDS.get(close_code, "client"), close_why, code=close_code)


async def _answer_only(heartbeats: Heartbeats, stats: PumpStats, send: Send, encoder: WebSocketEncoder) -> None:
    """A connection that only appends (`subscribe=0`, a runner's): heartbeats and the answers to
    its appends until it ends, no events (a writer would drop its own echo unread)."""
    heartbeats.add(stats, send, encoder)
    try:
        await anyio.sleep_forever()
    finally:
        heartbeats.remove(stats)


def client_gone(exc: BaseException) -> bool:
    """Whether `exc` only says the client left, also when a task group wrapped it (an exception
    group of disconnects is a client leaving mid-send, not a stream failure)."""
    if isinstance(exc, BaseExceptionGroup):
        return all(client_gone(inner) for inner in exc.exceptions)
    return isinstance(exc, (WebSocketDisconnect, OSError))


def _keep_credential(ws: WebSocket) -> None:
    """Drop the request's headers but the one an append is authorized by, once the stream is open
    (the checks of origin, host and credential are done): the connection holds them for its life.
    In place, so every view of the scope's headers sees the same."""
    headers = ws.scope.get("headers")
    if isinstance(headers, list):
        headers[:] = [h for h in headers if h[0] == b"authorization"]


def _shared_frame(epoch: str, items: list[Item]) -> bytes:
    return websocket_text_frame(WebSocketEncoder.items(epoch, items))


def _is_ping(text: str | None) -> bool:
    if not text or len(text) > 256:
        return False
    try:
        msg = orjson.loads(text)
    except orjson.JSONDecodeError:
        return False
    return isinstance(msg, dict) and msg.get("control") == "ping"


async def _close_slow(ws: WebSocket, reason: str) -> None:
    """A reading-but-slow peer may still get the 4408; a stalled one never will, so abort it."""
    with anyio.move_on_after(1):
        try:
            await ws.close(4408, close_reason(reason))
            return
        except (WebSocketDisconnect, OSError, RuntimeError):
            return
    transport = ws.scope.get("extensions", {}).get("gateway.transport")
    if transport is not None:
        transport["abort"]()
