"""Runners for the runs tests: the example fake runner and small failing variants, all real servers.

Each variant is built with ag-ui-protocol's `EventEncoder` and served by uvicorn on 127.0.0.1
(through `tests.fake_k8s.serve`), so the gateway talks to them over real HTTP.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import orjson
import uvicorn
from ag_ui.core import RunAgentInput, RunStartedEvent, TextMessageContentEvent, TextMessageStartEvent
from ag_ui.encoder import EventEncoder
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from examples.fake_runner import build_app
from tests.conftest import RunningGateway

ENCODER = EventEncoder()


@contextlib.asynccontextmanager
async def serve_runner(app: ASGIApp, port: int = 0) -> AsyncIterator[int]:
    """Serve `app` on 127.0.0.1 (`port`, or a free one) for the block; yields the port."""
    config = uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_level="warning",
                            access_log=False)
    server = uvicorn.Server(config)
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve)
        with anyio.fail_after(10):  # a server that never comes up, not a timing check
            while not server.started:
                await anyio.sleep(0.01)
        try:
            yield int(server.servers[0].sockets[0].getsockname()[1])
        finally:
            server.should_exit = True


@dataclass
class PlatformRunner:
    """The example runner behind the platform's checks: every call needs `X-Ambient-Session-Token:
    token` (else 401), and `GET /events/<session>` serves between-run events.

    Each events connection carries one `CUSTOM` event (`value.n` counts them) and ends, for the first
    `between_runs` connections; later ones stay open and quiet. With `fail_first`, the first
    connection is answered 503.
    """

    token: str
    between_runs: int = 0
    fail_first: bool = False
    calls: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)  # accepted: method, path, headers
    run_inputs: list[dict[str, Any]] = field(default_factory=list)  # bodies of accepted runs
    refused: int = 0
    events_connections: int = 0

    def app(self, delay: float = 0.0) -> ASGIApp:
        inner = build_app(delay)
        inner.router.routes.append(Route("/events/{session}", self._events, methods=["GET"]))

        async def guard(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] == "http":
                headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
                if headers.get("x-ambient-session-token") != self.token:
                    self.refused += 1
                    await PlainTextResponse("missing or wrong X-Ambient-Session-Token", 401)(scope, receive, send)
                    return
                self.calls.append((scope["method"], scope["path"], headers))
                if (scope["method"], scope["path"]) == ("POST", "/"):
                    receive = self._recording(receive)
            await inner(scope, receive, send)

        return guard

    def _recording(self, receive: Receive) -> Receive:
        chunks: list[bytes] = []

        async def recording() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                chunks.append(message.get("body", b""))
                if not message.get("more_body"):
                    self.run_inputs.append(orjson.loads(b"".join(chunks)))
            return message

        return recording

    async def _events(self, request: Request) -> Response:
        self.events_connections += 1
        n = self.events_connections - (1 if self.fail_first else 0)
        if n == 0:
            return PlainTextResponse("starting", 503)

        async def one() -> AsyncIterator[str]:
            event = {"type": "CUSTOM", "name": "background_task", "value": {"n": n}}
            yield f"data: {orjson.dumps(event).decode()}\n\n"

        async def quiet() -> AsyncIterator[str]:
            yield ": connected\n\n"
            await anyio.sleep_forever()

        return StreamingResponse(one() if n <= self.between_runs else quiet(), media_type="text/event-stream")


def run_body(question: str = "What is a cursor?", *, thread: str = "t1", run_id: str | None = None,
             history: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A RunAgentInput as JSON: earlier messages, then one new user message."""
    messages = [*(history or []), {"id": f"u-{uuid.uuid4().hex[:6]}", "role": "user", "content": question}]
    return {"threadId": thread, "runId": run_id or f"run-{uuid.uuid4().hex[:8]}", "state": {}, "tools": [],
            "context": [], "forwardedProps": {}, "messages": messages}


def cut_runner(*, abort: bool) -> Starlette:
    """Starts a run and stops mid-message: a clean end of body, or (`abort`) a broken connection."""

    async def run(request: Request) -> Response:
        body = RunAgentInput.model_validate_json(await request.body())

        async def stream() -> AsyncIterator[str]:
            yield ENCODER.encode(RunStartedEvent(thread_id=body.thread_id, run_id=body.run_id))
            yield ENCODER.encode(TextMessageStartEvent(message_id="m1", role="assistant"))
            yield ENCODER.encode(TextMessageContentEvent(message_id="m1", delta="Half a"))
            await anyio.lowlevel.checkpoint()
            if abort:
                raise RuntimeError("runner crashed mid-run")

        return StreamingResponse(stream(), media_type=ENCODER.get_content_type())

    return Starlette(routes=[Route("/", run, methods=["POST"])])


def error_runner(status: int, body: str) -> Starlette:
    """Answers every request with `status` and `body` (e.g. an HTML error page far over 1 KiB)."""

    async def fail(request: Request) -> Response:
        return PlainTextResponse(body, status_code=status)

    return Starlette(routes=[Route("/", fail, methods=["POST"]), Route("/capabilities", fail)])


def counting_capabilities(counter: list[int]) -> Starlette:
    """Only `GET /capabilities`, counting requests, so tests can see the gateway's cache."""

    async def caps(request: Request) -> Response:
        counter.append(1)
        return Response(orjson.dumps({"n": len(counter)}), media_type="application/json")

    return Starlette(routes=[Route("/capabilities", caps)])


def set_runner_port(state_dir: Path, session: str, port: int, project: str = "p") -> None:
    """Create a session whose `meta.json` names its runner port (read by the files catalog)."""
    folder = state_dir / "sessions" / session
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "meta.json").write_bytes(orjson.dumps({"project": project, "runnerPort": port}))


def session_url(gw: RunningGateway, session: str, tail: str = "", project: str = "p") -> str:
    return f"{gw.base}/v1/projects/{project}/sessions/{session}{tail}"


def stored(gw: RunningGateway, session: str) -> list[dict[str, Any]]:
    path = gw.settings.state_dir / "sessions" / session / "agui-events.jsonl"
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


async def wait_until_done(gw: RunningGateway, session: str, project: str = "p") -> list[dict[str, Any]]:
    """Poll the log until its last event closes a run; bounded, not a timing assertion."""
    with anyio.fail_after(30):
        while True:
            resp = await gw.http.get(session_url(gw, session, project=project))
            if resp.status_code == 200 and resp.json()["agentStatus"] != "working":
                events = stored(gw, session)
                if events and events[-1]["type"] in ("RUN_FINISHED", "RUN_ERROR"):
                    return events
            await anyio.sleep(0.02)


def parse_sse(body: bytes) -> list[tuple[str | None, bytes]]:
    """(id, data) of each SSE event in a body; comments and `retry` are dropped."""
    out = []
    for block in body.replace(b"\r\n", b"\n").split(b"\n\n"):
        ident, data = None, []
        for line in block.split(b"\n"):
            if line.startswith(b"id: "):
                ident = line[4:].decode()
            elif line.startswith(b"data: "):
                data.append(line[6:])
        if data:
            out.append((ident, b"\n".join(data)))
    return out
