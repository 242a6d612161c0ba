"""uvicorn's websockets-sansio protocol with what a streaming gateway needs.

1. A text send that takes the frame's UTF-8 bytes as they are (the gateway builds frames as
   bytes; the ASGI `websocket.send` would have them decoded only to encode them again).
2. An abort the application can call (scope extension `gateway.transport`). A peer that has
   stopped reading sits behind megabytes of queued data: it can never receive a close frame,
   `close()` blocks, and uvicorn's graceful shutdown would wait for it forever. Aborting with
   SO_LINGER 0 sends RST and frees the kernel send buffer at once.
3. A bounded kernel send buffer, so a stalled client pins at most that much kernel memory.
4. A bound on pongs queued for a peer that does not read: a client sending pings without reading
   would otherwise have the server buffer every pong (hundreds of MB). Past `PONG_BUDGET` bytes
   queued while the write buffer is not empty, the connection is closed with 1008 and aborted.
5. A non-blocking write of a prebuilt frame, shared by the followers of a session's hub.
6. The extension is dropped when the connection is lost (its methods would hold the protocol
   in a cycle).
7. Shutdown closes with 1001 ("going away", PROTOCOL §4) instead of uvicorn's 1012, and aborts
   what has not closed two seconds later.
8. Reads pause only once several client messages wait for the app, not after each one.
9. Less memory per idle connection: the receive queue and the `writable` event without
   asyncio's deques (`Inbox`, `Flag`: about 3 KB less), and the handshake's request and response
   (headers parsed twice over) dropped once the connection is accepted, and the parser that
   parsed the request replaced by a fresh frame parser (`forget_request`).
10. Once open, whole single-frame text messages are cut from the stream by `client_frame`
   instead of websockets' generator parser (4 us against 0.8 per message); control frames still
   go through websockets, whole, and anything else (fragments, binary, oversized or malformed
   frames) hands the connection over to it for good. The app may take such a message at once
   (`set_on_text`: the WebSocket appends), skipping its receive loop.

This subclasses uvicorn internals, which is why uvicorn is pinned; tests cover each behaviour.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Callable
from typing import Any

from uvicorn.protocols.utils import ClientDisconnected
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.exceptions import InvalidState
from websockets.protocol import Protocol, State

from gateway.stream.framing import CONTROL_FRAME, OTHER_FRAME, client_frame, websocket_text_frame

ABORT_AFTER_SHUTDOWN = 2.0
SEND_BUFFER = 512 * 1024
"""Kernel send buffer per WebSocket. Linux autotunes it up to 4 MiB, all of it held for a client
that stopped reading; 512 KiB keeps a fast client at full speed on this machine (bench/replay.py)."""


INBOX_MESSAGES = 16
"""Client messages queued for the app before reading the connection pauses (each is at most the
64 KiB message limit)."""

PONG_BUDGET = 64 * 1024
"""Bytes of pongs the server queues for a peer that is not reading before it gives up on it."""


def abort(transport: asyncio.Transport | None) -> None:
    """Drop a connection at once (RST via SO_LINGER 0): its buffered data is freed, not flushed,
    also when a graceful close is already waiting for a peer that does not read."""
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def forget_extension(scope: Any) -> None:
    """Drop the `gateway.transport` extension once the connection is lost: its bound methods hold
    the protocol, which holds the scope, a cycle that would wait for the garbage collector."""
    if scope is not None:
        scope.get("extensions", {}).pop("gateway.transport", None)


def forget_request(conn: Protocol) -> bool:
    """Restart the frame parser of an open connection that has received nothing since its handshake.

    websockets' server parser is a generator that parsed the HTTP request and then parses frames
    for the connection's whole life, so its frame holds the request (its headers) until the end.
    A fresh frame parser holds nothing; with no byte buffered it starts exactly where the old one
    stood. A client may not send frames before the handshake's answer, but if bytes are already
    buffered the old parser stays. True when the parser was replaced: it stands at a frame boundary.
    """
    if conn.state is State.OPEN and not conn.reader.buffer and not conn.reader.eof:
        conn.parser = Protocol.parse(conn)
        next(conn.parser)
        return True
    return False


class Flag:
    """What uvicorn uses of `asyncio.Event` for `writable`, holding no deque while nobody waits:
    an idle connection's flag is set and waited on by no one."""

    __slots__ = ("_set", "_waiters")

    def __init__(self) -> None:
        self._set = True
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        self._set = False

    async def wait(self) -> None:
        if self._set:
            return
        waiter = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            if self._waiters is not None and waiter in self._waiters:
                self._waiters.remove(waiter)


class Inbox:
    """What uvicorn uses of `asyncio.Queue` for the messages to the app (`put_nowait`, `get`,
    `empty`) without its four deques: a list, and a future only while the app waits."""

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: list[Any] = []
        self._waiter: asyncio.Future[None] | None = None

    def put_nowait(self, item: Any) -> None:
        self._items.append(item)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def empty(self) -> bool:
        return not self._items

    def __len__(self) -> int:
        return len(self._items)

    async def get(self) -> Any:
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.pop(0)


class GatewayWSProtocol(WebSocketsSansIOProtocol):
    pong_bytes = 0
    flooded = False
    lane: bytes | None = None
    """Bytes read and not yet parsed while the connection's frames are cut by `client_frame`;
    None while websockets' parser reads them (the handshake, and for good after a handover)."""
    on_text: Callable[[str], bool] | None = None
    """The app's handler of text messages as they arrive (`set_on_text`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.queue = Inbox()  # type: ignore[assignment]
        self.writable = Flag()  # type: ignore[assignment]

    def send_receive_event_to_app(self) -> None:
        """Queue a client message for the app, pausing reads only once `INBOX_MESSAGES` wait.

        uvicorn pauses reading after every message and resumes at the app's next `receive`: two
        epoll_ctl calls and a failed selector lookup per message, measured a quarter of the
        gateway's CPU under many WebSocket appends. A client that sends faster than the app takes
        is still held back by TCP, with at most `INBOX_MESSAGES` messages queued here.
        """
        paused = self.read_paused
        self.read_paused = True  # uvicorn's method then leaves the transport as it is
        super().send_receive_event_to_app()
        self.read_paused = paused
        if not paused and len(self.queue) >= INBOX_MESSAGES:  # type: ignore[arg-type]
            self.read_paused = True
            self.transport.pause_reading()

    def data_received(self, data: bytes) -> None:
        if self.lane is None:
            super().data_received(data)
            return
        buf = self.lane + data if self.lane else data
        limit = self.conn.max_message_size
        pos = 0
        while (found := client_frame(buf, pos, 1 << 63 if limit is None else limit)) is not None:
            kind, end, payload = found
            if kind == OTHER_FRAME:
                self.lane = None
                super().data_received(buf[pos:])
                return
            if kind == CONTROL_FRAME:
                self.conn.receive_data(buf[pos:end])
                if self.conn.parser_exc is not None:
                    self.lane = None
                    self.handle_parser_exception()
                    return
                self.handle_events()
            elif not self._took(payload):
                self.curr_msg_data_type = "text"
                self.frames = [payload]
                self.send_receive_event_to_app()
            pos = end
            if self.close_sent or self.conn.state is not State.OPEN:  # a close, or bad UTF-8 (1007)
                self.lane = None
                if pos < len(buf) and not self.transport.is_closing():
                    super().data_received(buf[pos:])
                return
        self.lane = buf[pos:]

    def _took(self, payload: bytes) -> bool:
        """Whether the app's `on_text` took a text message here, in order: only while no earlier
        message waits for its receive loop. Bad UTF-8 goes the usual way (closed with 1007)."""
        if self.on_text is None or not self.queue.empty() or self.close_sent:
            return False
        try:
            text = payload.decode()
        except UnicodeDecodeError:
            return False
        return self.on_text(text)

    def set_on_text(self, handler: Callable[[str], bool]) -> None:
        """Have `handler` take the text messages it returns True for as they arrive, before they
        are queued for the app's `receive` (which gets the others). Set once the app accepted."""
        self.on_text = handler

    def hard_abort(self) -> None:
        if not self.disconnected:
            abort(self.transport)

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)

    async def send_text_bytes(self, data: bytes) -> None:
        """Send UTF-8 bytes as one text frame, as `send()` would a str, without decoding them first;
        written at once, header and all, when nothing holds the connection back and no extension
        rewrites frames (websockets would build the same bytes, at several times the cost)."""
        if self.send_text_now(data):
            return
        await self.writable.wait()
        if self.disconnected or self.close_sent or self.transport.is_closing():
            raise ClientDisconnected()
        try:
            self.conn.send_text(data)
        except InvalidState:
            raise ClientDisconnected() from None
        self.transport.write(b"".join(self.conn.data_to_send()))

    def send_text_now(self, data: bytes) -> bool:
        """`send_text_bytes` if it takes no wait, else False with nothing sent."""
        return not self.conn.extensions and self.write_frame_now(websocket_text_frame(data))

    def shared_writer(self) -> Callable[[bytes], bool] | None:
        """`write_frame_now` when this connection's frames are the shared bytes (no extension
        such as permessage-deflate rewrites them), else None. Asked after the handshake."""
        return None if self.conn.extensions else self.write_frame_now

    def write_frame_now(self, frame: bytes) -> bool:
        """Write a whole prebuilt server text frame if the connection takes it without waiting.

        False (nothing written) while uvicorn's flow control holds sends (the transport's buffer
        is above its high-water mark) or the connection is no longer open. The frame is what
        `conn.send_text` would have produced, so the websockets state needs no update.
        """
        if (self.disconnected or self.close_sent or not self.writable.is_set() or self.conn.state is not State.OPEN
                or self.transport.is_closing()):
            return False
        self.transport.write(frame)
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self.on_text = None  # the handler holds the app's side of the connection, which holds this
        forget_extension(getattr(self, "scope", None))

    async def send(self, message: Any) -> None:
        await super().send(message)
        if message["type"] == "websocket.accept" and self.handshake_complete:
            del self.request, self.response  # only the handshake needs them
            if forget_request(self.conn):
                self.lane = b""

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)
        if scope is not None:
            scope["extensions"]["gateway.transport"] = {
                "abort": self.hard_abort, "send_text": self.send_text_bytes, "send_text_now": self.send_text_now,
                "shared_writer": self.shared_writer,
                "on_text": self.set_on_text,
            }

    def handle_ping(self) -> None:
        """Answer pings as the protocol wants, but only up to `PONG_BUDGET` while the peer is behind."""
        output = b"".join(self.conn.data_to_send())
        if self.flooded:
            return
        if self.transport.get_write_buffer_size() == 0:
            self.pong_bytes = 0  # the peer has been taking what was sent: nothing is piling up
        else:
            self.pong_bytes += len(output)
        if self.pong_bytes <= PONG_BUDGET:
            self.transport.write(output)
            return
        self.flooded = True
        self.stop_keepalive()
        self.queue.put_nowait({"type": "websocket.disconnect", "code": 1008})
        self.conn.send_close(1008, "too many pings while not reading")
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.loop.call_later(ABORT_AFTER_SHUTDOWN, self.hard_abort)  # a peer that reads nothing never sees it

    def keepalive_timeout(self) -> None:
        super().keepalive_timeout()
        self.hard_abort()

    def shutdown(self) -> None:
        if self.handshake_complete and not self.close_sent and not self.disconnected:
            self.stop_keepalive()
            self.queue.put_nowait({"type": "websocket.disconnect", "code": 1001})
            self.conn.send_close(1001, "server shutting down; reconnect with your last cursor")
            self.transport.write(b"".join(self.conn.data_to_send()))
            # close_sent stays False on purpose: the application's next send then fails as a
            # disconnect (the connection is CLOSING), instead of as a protocol misuse.
            self.loop.call_later(ABORT_AFTER_SHUTDOWN, self.hard_abort)
            return
        super().shutdown()
