"""App wiring: routes, error rendering, and the lifespan that runs the background loops."""

from __future__ import annotations

import contextlib
import errno
import hmac
import logging
import os
import resource
from collections.abc import AsyncIterator
from pathlib import Path
from typing import cast

import anyio
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Match, Mount, Route, compile_path
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, ExceptionHandler, Message, Receive, Scope, Send
from starlette.websockets import WebSocket

from gateway import compat
from gateway.api import durable, events, runs, sessions
from gateway.api.access import credential
from gateway.api.errors import HANDLED, ApiError, api_error, refuse_websocket
from gateway.api.guard import RequestGuard
from gateway.api.openapi import openapi
from gateway.api.spec import STRING, answer, json_answer, obj, operation, ref
from gateway.api.websocket import events_websocket
from gateway.config import Settings
from gateway.demo import run_demo
from gateway.runtime import Gateway, gateway_of

log = logging.getLogger("gateway")

EVENTS = "/v1/projects/{project}/sessions/{session}/events"
STATIC = Path(__file__).parent / "static"


@operation(answers={200: json_answer("the process serves", obj(("status",), status={"const": "ok"}))})
async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


def _descriptor_problem() -> str | None:
    """Descriptors (nearly) exhausted: new streams and sessions would fail with EMFILE."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        used = len(os.listdir("/proc/self/fd"))
    except OSError as exc:
        if exc.errno in (errno.EMFILE, errno.ENFILE):
            return "out of file descriptors"
        return None  # no /proc here: nothing to tell
    if soft != resource.RLIM_INFINITY and used >= soft * 0.95:
        return f"{used} of {soft} file descriptors in use"
    return None


UNREADY = obj(("status", "problems"), status={"const": "unavailable"}, problems={"type": "array", "items": STRING})


@operation(answers={200: json_answer("ready for traffic", obj(("status",), status={"const": "ready"})),
                    503: json_answer("not ready (or over the connection limit: an Error)",
                                     {"oneOf": [UNREADY, ref("Error")]})})
async def readyz(request: Request) -> Response:
    gw = gateway_of(request)
    problems = []
    if gw.draining.is_set():
        problems.append("shutting down")
    state = gw.settings.state_dir / "sessions"
    if not await anyio.to_thread.run_sync(_writable, state):
        problems.append(f"state dir {state} is not writable")
    descriptors = _descriptor_problem()
    if descriptors:
        problems.append(descriptors)
    backend = await gw.backend_problem()
    if backend:
        problems.append(backend)
    if problems:
        return JSONResponse({"status": "unavailable", "problems": problems}, status_code=503)
    return JSONResponse({"status": "ready"})


@operation(answers={200: answer("the viewer page", {"text/html": STRING})})
async def viewer(request: Request) -> Response:
    """The built-in session viewer (static files, no build step)."""
    return FileResponse(STATIC / "index.html")


def _writable(path: Path) -> bool:
    return os.access(path, os.W_OK | os.X_OK)


@operation(errors=(401,), answers={200: answer("Prometheus text", {CONTENT_TYPE_LATEST.split(";")[0]: STRING})})
async def metrics(request: Request) -> Response:
    """Prometheus metrics; with GATEWAY_METRICS_TOKEN set, only for a scraper presenting it."""
    gw = gateway_of(request)
    wanted = gw.settings.metrics_token
    if wanted:
        given = credential(request.headers, request.query_params) or ""
        if not hmac.compare_digest(given.encode(), wanted.encode()):
            raise ApiError(401, "unauthenticated", "/metrics needs the GATEWAY_METRICS_TOKEN bearer token")
    return Response(gw.metrics.render(), media_type=CONTENT_TYPE_LATEST)


def _allowed_methods(conn: HTTPConnection) -> str:
    """A 405's `Allow`: the methods of every route of the path (starlette names only the first
    route's, and the events path has one route per method)."""
    methods: set[str] = set()
    for route in conn.app.routes:
        if isinstance(route, Route) and route.methods and route.matches(conn.scope)[0] is not Match.NONE:
            methods |= route.methods
    return ", ".join(sorted(methods))


async def _error(conn: HTTPConnection, exc: Exception) -> Response | None:
    """The one handler of the error table (`gateway.api.errors`): a JSON error, or a close code."""
    headers: dict[str, str] = {}
    if isinstance(exc, HTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        error = ApiError(exc.status_code, code, f"{exc.detail}: {conn.url.path}")
        if exc.status_code == 405:
            headers["allow"] = _allowed_methods(conn)
    else:
        error = api_error(exc)
    gateway_of(conn).metrics.rejected.labels(str(error.status)).inc()
    if isinstance(conn, WebSocket):
        await refuse_websocket(conn, error.ws_code, error.message)
        return None
    response = error.response()
    response.headers.update(headers)
    return response


class WorkerHeader:
    """Names the worker that answers (`X-Gateway-Worker`) on every response and WebSocket accept,
    so operators and tests can tell which of `--workers N` processes served a connection."""

    def __init__(self, app: ASGIApp, worker: int) -> None:
        self.app = app
        self.header = (b"x-gateway-worker", str(worker).encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return

        async def named(message: Message) -> None:
            if message["type"] in ("http.response.start", "websocket.accept"):
                message["headers"] = [*message.get("headers", ()), self.header]
            await send(message)

        await self.app(scope, receive, named)


class EventsSocket:
    """The events WebSocket served right below the guards, past starlette's exception middleware
    and router: a follower's connection lives for hours, and every layer it passes keeps its
    coroutine frames (the router's exception wrappers several) for all that time. Errors get the
    app's one handler, as through the router."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.regex, _, self.convertors = compile_path(EVENTS)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = self.regex.match(scope["path"]) if scope["type"] == "websocket" else None
        if match is None:
            await self.app(scope, receive, send)
            return
        scope["path_params"] = {k: self.convertors[k].convert(v) for k, v in match.groupdict().items()}
        ws = WebSocket(scope, receive, send)
        try:
            await events_websocket(ws)
        except HANDLED as exc:
            await _error(ws, exc)


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
                tg.start_soon(run_demo, gw.store, gw.registry)
            log.info("gateway started", extra={"state_dir": str(settings.state_dir)})
            try:
                yield
            finally:
                gw.begin_shutdown()
                tg.cancel_scope.cancel()
        gw.registry.keep_all()
        gw.store.close()
        await gw.close_backends()

    routes = [
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics),
        Route("/openapi.json", openapi),
        Route(EVENTS, events.stream_events, methods=["GET"]),
        Route(EVENTS, events.append_events, methods=["POST"]),
        Route(EVENTS, events.delete_events, methods=["DELETE"]),
        Route("/v1/projects/{project}/sessions/{session}/export", events.export_events),
        Route("/v1/projects/{project}/sessions/{session}", events.session_status),
        Route("/v1/projects/{project}/sessions", sessions.list_sessions),
        *runs.routes(),
        *compat.routes(),
        Route(durable.PATH, durable.Endpoint()),
        Route("/", viewer),
        Mount("/static", StaticFiles(directory=STATIC)),
    ]
    middleware = [
        Middleware(RequestGuard, listen=settings.host, allowed_hosts=settings.allowed_hosts,
                   allowed_origins=settings.allowed_origins, capacity=gw.registry.check_capacity),
    ]
    if gw.shared is not None:
        middleware.append(Middleware(WorkerHeader, worker=gw.shared.index))
    if settings.allowed_origins:
        middleware.append(Middleware(
            CORSMiddleware, allow_origins=list(settings.allowed_origins),
            allow_methods=["GET", "HEAD", "POST", "PUT", "DELETE"], max_age=600,
            allow_headers=["authorization", "content-type", "last-event-id", *durable.ALLOW_HEADERS.split(", ")],
            expose_headers=durable.EXPOSE_HEADERS.split(", "),
        ))
    middleware.append(Middleware(EventsSocket))  # the events WebSocket: it has no route of its own
    app = Starlette(routes=routes, lifespan=lifespan, middleware=middleware,
                    exception_handlers=dict.fromkeys((*HANDLED, HTTPException), cast(ExceptionHandler, _error)))
    app.state.gateway = gw
    return app
