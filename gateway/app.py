"""App wiring: routes, error rendering, and the lifespan that runs the background loops."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles

from gateway import compat
from gateway.api import events, runs, sessions
from gateway.api.errors import ApiError
from gateway.config import Settings
from gateway.demo import run_demo
from gateway.runtime import Gateway
from gateway.transports.websocket import events_websocket

log = logging.getLogger("gateway")

EVENTS = "/v1/projects/{project}/sessions/{session}/events"
STATIC = Path(__file__).parent / "static"


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    problems = []
    if gw.draining.is_set():
        problems.append("shutting down")
    state = gw.settings.state_dir / "sessions"
    if not await anyio.to_thread.run_sync(_writable, state):
        problems.append(f"state dir {state} is not writable")
    if problems:
        return JSONResponse({"status": "unavailable", "problems": problems}, status_code=503)
    return JSONResponse({"status": "ready"})


async def viewer(request: Request) -> Response:
    """The built-in session viewer (static files, no build step)."""
    return FileResponse(STATIC / "index.html")


def _writable(path: Path) -> bool:
    return os.access(path, os.W_OK | os.X_OK)


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return exc.response()


def build_app(settings: Settings, gateway: Gateway | None = None) -> Starlette:
    gw = gateway or Gateway.create(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        gw.store.ensure_root()
        await gw.open_backends()
        async with anyio.create_task_group() as tg:
            tg.start_soon(gw.run_loops)
            await tg.start(gw.runs.serve)
            if settings.demo:
                tg.start_soon(run_demo, gw)
            log.info("gateway started", extra={"state_dir": str(settings.state_dir)})
            try:
                yield
            finally:
                gw.begin_shutdown()
                tg.cancel_scope.cancel()
        gw.store.close()
        await gw.close_backends()

    routes = [
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        WebSocketRoute(EVENTS, events_websocket),
        Route(EVENTS, events.stream_events, methods=["GET"]),
        Route(EVENTS, events.append_events, methods=["POST"]),
        Route(EVENTS, events.delete_events, methods=["DELETE"]),
        Route("/v1/projects/{project}/sessions/{session}/export", events.export_events),
        Route("/v1/projects/{project}/sessions/{session}", events.session_status),
        Route("/v1/projects/{project}/sessions", sessions.list_sessions),
        *runs.routes(),
        *compat.routes(),
        Route("/", viewer),
        Mount("/static", StaticFiles(directory=STATIC)),
    ]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={ApiError: _api_error})
    app.state.gateway = gw
    return app
