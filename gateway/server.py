"""Running the app under uvicorn with the gateway's transport and shutdown behaviour."""

from __future__ import annotations

import gc
import logging
import resource
import signal
import socket
from collections.abc import Callable

import anyio.lowlevel
import uvicorn

from gateway.app import build_app
from gateway.config import Settings
from gateway.runtime import Gateway
from gateway.transports.uvicorn_http import http_protocol
from gateway.transports.uvicorn_ws import GatewayWSProtocol

log = logging.getLogger("gateway")

CLIENT_MESSAGE_LIMIT = 64 * 1024
"""Clients send only small controls; anything larger is closed with 1009."""

YOUNG_COLLECTION_THRESHOLD = 50_000
"""Allocations between two young-generation collections (CPython's default is 700)."""


def uvicorn_config(settings: Settings, gateway: Gateway | None = None) -> uvicorn.Config:
    """The server's configuration. The loop is asyncio's own even where uvloop is installed (which
    uvicorn would pick): under many sessions' appends uvloop cost as much CPU per append and took
    2-3 times as long to connect a storm of followers (docs/benchmarks.md)."""
    return uvicorn.Config(
        build_app(settings, gateway),
        loop="asyncio",
        host=settings.host,
        port=settings.port,
        http=http_protocol(settings.header_timeout),
        ws=GatewayWSProtocol,
        ws_per_message_deflate=settings.ws_compression,
        ws_max_size=CLIENT_MESSAGE_LIMIT,
        ws_ping_interval=max(settings.heartbeat_interval, 1.0),
        ws_ping_timeout=max(settings.heartbeat_interval, 1.0),
        timeout_graceful_shutdown=int(settings.shutdown_grace) or 1,
        log_config=None,
        access_log=True,
        server_header=False,
    )


class GatewayServer(uvicorn.Server):
    """Tells the app to drain (streams end, readiness fails) before uvicorn waits for connections.

    uvicorn waits for open responses before it runs the lifespan shutdown, so an endless SSE
    stream would hold it for the whole grace period unless the app is told first.
    """

    def __init__(self, config: uvicorn.Config, gateway: Gateway,
                 on_started: Callable[[], None] | None = None, settle_heap: bool = False) -> None:
        super().__init__(config)
        self.gateway = gateway
        self.on_started = on_started
        self.settle_heap = settle_heap
        # every connection counts against GATEWAY_MAX_CONNECTIONS (HTTP and WebSocket alike)
        gateway.registry.sockets = lambda: len(self.server_state.connections)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and self.settle_heap:
            settle_heap()
        if self.started and self.on_started is not None:
            self.on_started()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.gateway.begin_shutdown()
        await anyio.lowlevel.checkpoint()  # let streams see the drain before connections are cut
        await super().shutdown(sockets)


def settle_heap() -> None:
    """Keep the cyclic garbage collector from stalling the event loop under load.

    A full collection walks every tracked object; with the ~150k that modules, routes and
    sessions hold, CPython's defaults ran one of 60-115 ms every few seconds at 4,000 appends/s,
    which every stream then saw as latency. What startup allocated is frozen out of the
    collector's sight, and young collections (and so the older ones they trigger) run about
    70 times less often; the gateway's per-event garbage is freed by reference
    counting, so this only delays reclaiming the rare cycle.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_COLLECTION_THRESHOLD, *gc.get_threshold()[1:])


def raise_fd_limit(connections: int, open_logs: int) -> None:
    """Lift the soft descriptor limit to the hard one: each stream is a socket, and the usual
    soft default of 1024 would cap a gateway far below GATEWAY_MAX_CONNECTIONS."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = connections + 3 * open_logs + 256  # sockets, each open log's three descriptors, the rest
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    if soft != resource.RLIM_INFINITY and soft < wanted:
        log.warning("open file limit below the connection limit", extra={
            "limit": soft, "max_connections": connections,
            "hint": "raise `ulimit -n` or lower GATEWAY_MAX_CONNECTIONS"})


def serve(settings: Settings) -> int:
    """Run until SIGTERM/SIGINT, then drain and return the exit status (0 after a graceful stop).

    uvicorn re-raises the signal that stopped it once it is done; a SIGTERM handler that does
    nothing is what that re-raise then meets, so a drained gateway exits 0 instead of 143.
    """
    raise_fd_limit(settings.max_connections, settings.max_open_logs)
    gateway = Gateway.create(settings)
    server = GatewayServer(uvicorn_config(settings, gateway), gateway, settle_heap=True)
    signal.signal(signal.SIGTERM, lambda _sig, _frame: None)
    server.run()
    return 0
