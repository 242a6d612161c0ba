"""uvicorn's h11 protocol with the limits a server facing hostile clients needs.

1. Read timeouts (GATEWAY_HEADER_TIMEOUT): a connection that has not sent complete headers that
   long after it opened or after its last request ended, or whose body stops arriving that long
   while the application waits for it, is aborted. Without them, a few thousand connections
   trickling partial headers or bodies (slowloris) are held for as long as the client likes.
2. A bounded kernel send buffer and an abort the application can call (scope extension
   `gateway.transport`), as for WebSocket (`uvicorn_ws`): an SSE or NDJSON client that stopped
   reading then pins at most `SEND_BUFFER` bytes, and is cut once GATEWAY_SEND_TIMEOUT passes.
   The extension is dropped when the connection is lost (its method would hold the protocol).
3. A non-blocking write of a prebuilt chunk of a streamed (chunked) response, shared by the SSE
   or NDJSON followers of a session's hub (`shared_writer`).
4. WebSocket upgrades pass the server's `TurnGate` (`admission.py`): a few handshakes start per
   event-loop turn, the others wait (reading paused) for the next turns, so a storm of new
   connections does not stall the live streams already open.

This subclasses uvicorn internals, which is why uvicorn is pinned; tests cover each behaviour.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
import weakref
from collections.abc import Callable
from typing import Any

import h11
from h11._writers import ChunkedWriter
from uvicorn.protocols.http.h11_impl import H11Protocol, RequestResponseCycle

from gateway.transports.admission import TurnGate
from gateway.transports.uvicorn_ws import SEND_BUFFER, abort, forget_extension

_GATES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, TurnGate] = weakref.WeakKeyDictionary()
"""One gate per event loop: the connections of one server (or worker) share its turns."""


class GatewayHTTPProtocol(H11Protocol):
    read_timeout = 10.0
    read_timer: asyncio.TimerHandle | None = None
    upgraded = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
        self.arm_read_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self.disarm_read_timer()
        super().connection_lost(exc)
        forget_extension(self.scope)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.upgraded:
            return  # the connection is a WebSocket's now: h11 still says SEND_BODY, but no body comes
        waiting = self.conn.their_state in (h11.IDLE, h11.SEND_BODY) and not self.transport.is_closing()
        if waiting and (self.conn.their_state is h11.SEND_BODY or self.conn.trailing_data[0]):
            self.arm_read_timer()  # partial headers, or a body still coming: each chunk restarts the clock
        elif not waiting:
            self.disarm_read_timer()
        if self.cycle is not None and "extensions" not in self.scope:
            self.scope["extensions"] = {"gateway.transport": {"abort": self.hard_abort,
                                                              "shared_writer": self.shared_writer}}

    def handle_websocket_upgrade(self, event: h11.Request) -> None:
        self.upgraded = True
        self.disarm_read_timer()
        gate = _GATES.get(self.loop)
        if gate is None:
            gate = _GATES[self.loop] = TurnGate(self.loop.call_soon)
        self.transport.pause_reading()  # nothing more for h11: the client waits for the handshake's answer
        gate.admit(functools.partial(self.start_websocket, event))

    def shutdown(self) -> None:
        if self.upgraded:  # still waiting for its turn to become a WebSocket: nothing to finish
            self.transport.close()  # (h11 would refuse to close a request it has not answered)
            return
        super().shutdown()

    def start_websocket(self, event: h11.Request) -> None:
        if self.transport.is_closing():
            return  # lost, or closed by a shutdown, while it waited for its turn
        self.transport.resume_reading()  # the WebSocket protocol takes over the transport below
        super().handle_websocket_upgrade(event)

    def hard_abort(self) -> None:
        abort(self.transport)

    def shared_writer(self) -> Callable[[bytes], bool] | None:
        """A writer of whole prebuilt chunks (`framing.http_chunk`) into the response being streamed, when that
        response is chunked (HTTP/1.1) and so its body bytes are the same for every follower;
        else None. Asked after the response has started."""
        cycle = self.cycle
        if cycle is None or not cycle.response_started or not isinstance(self.conn._writer, ChunkedWriter):
            return None
        return functools.partial(self.write_chunk_now, cycle)

    def write_chunk_now(self, cycle: RequestResponseCycle, chunk: bytes) -> bool:
        """Write a whole chunk if the response takes it without waiting: False (nothing written)
        while the transport is above its high-water mark, or once the response or connection ended."""
        if (cycle is not self.cycle or cycle.disconnected or cycle.response_complete or self.flow.write_paused
                or self.transport.is_closing()):
            return False
        self.transport.write(chunk)
        return True

    def arm_read_timer(self) -> None:
        self.disarm_read_timer()
        self.read_timer = self.loop.call_later(self.read_timeout, self.read_timed_out)

    def disarm_read_timer(self) -> None:
        if self.read_timer is not None:
            self.read_timer.cancel()
            self.read_timer = None

    def read_timed_out(self) -> None:
        self.read_timer = None
        if self.conn.their_state is h11.SEND_BODY and self.flow.read_paused:
            self.arm_read_timer()  # the application is not reading the body yet: the client is not to blame
            return
        if self.conn.their_state in (h11.IDLE, h11.SEND_BODY):
            self.hard_abort()


def http_protocol(read_timeout: float) -> type[GatewayHTTPProtocol]:
    """The protocol class uvicorn instantiates per connection, with this gateway's timeout."""
    attrs: dict[str, Any] = {"read_timeout": read_timeout}
    return type("GatewayHTTPProtocol", (GatewayHTTPProtocol,), attrs)
