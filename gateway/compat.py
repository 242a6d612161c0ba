"""The platform backend's routes (PROTOCOL §3 "Compatibility routes"), so its frontend works unchanged.

Each one is a thin shape over the `/v1` handlers: the same authorization, store and runner code.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import anyio
import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from gateway.api import events
from gateway.api.access import READ, WRITE, session_access
from gateway.api.errors import ApiError, bad_request
from gateway.api.events import SESSION_PARAMS, read_body
from gateway.api.guard import require_json
from gateway.api.runs import (
    INTERRUPTED,
    RUN_ERRORS,
    RUN_ID,
    RUN_INPUT,
    RUN_SCHEMAS,
    get_capabilities,
    interrupt_run,
    post_feedback,
    start_run,
)
from gateway.api.sessions import LIMIT, SEARCH, int_param, listing
from gateway.api.spec import (
    INTEGER,
    NAME,
    SSE,
    SSE_PARAMS,
    STRING,
    Link,
    answer,
    json_answer,
    nullable,
    obj,
    operation,
    query,
    ref,
)
from gateway.sessions.catalog import SessionInfo
from gateway.store.base import LinkRefused
from gateway.store.fds import nofollow
from gateway.store.layout import LEGACY_NAME
from gateway.stream.framing import Batch
from gateway.stream.reader import LogReader
from gateway.transports.http_stream import EventStreamResponse

BASE = "/api/projects/{project}/agentic-sessions"
SESSION = BASE + "/{session}"
LEGACY_CHUNK = 256 * 1024


@operation(access="session", params=SSE_PARAMS,
           answers={200: answer("the events over SSE, whatever the Accept header says", {SSE: ref("SseEvent")})})
async def agui_events(request: Request) -> Response | EventStreamResponse:
    """GET agui/events: the events route's SSE variant, whatever the Accept header says."""
    scope = dict(request.scope)
    scope["headers"] = [(k, v) for k, v in request.scope["headers"] if k != b"accept"]
    scope["headers"].append((b"accept", b"text/event-stream"))
    return await events.stream_events(Request(scope, request.receive))


@operation(access="session", body={"application/json": RUN_INPUT}, components=RUN_SCHEMAS, errors=RUN_ERRORS,
           answers={200: json_answer("started", obj(("runId", "threadId"), runId=RUN_ID, threadId=STRING))},
           links={"Watch": Link(agui_events, SESSION_PARAMS, "the session's events, the run's among them")})
async def agui_run(request: Request) -> Response:
    """POST agui/run: starts the run like POST .../runs and answers `{runId, threadId}`."""
    run = await start_run(request)
    return JSONResponse({"runId": run.run_id, "threadId": run.thread_id})


@operation(access="session", body={"application/json": obj(runId=RUN_ID)}, body_required=False, errors=(502,),
           answers={202: INTERRUPTED})
async def agui_interrupt(request: Request) -> Response:
    """POST agui/interrupt: `{"runId"}` in the body, else the session's run in progress."""
    access = await session_access(request, WRITE)
    body = await read_body(request, 64 * 1024)
    if body.strip():
        require_json(request)  # an empty body names no run: the Origin check alone guards it
    try:
        payload = orjson.loads(body) if body.strip() else {}
    except orjson.JSONDecodeError as exc:
        raise bad_request(f"body is not valid JSON: {exc}", "bad_json") from None
    run_id = payload.get("runId") if isinstance(payload, dict) else None
    if run_id is None:
        running = list(access.gw.runs.active.get((access.project, access.session), {}))
        if not running:
            raise ApiError(404, "no_run", f"session {access.session!r} has no run in progress on this gateway; "
                           "name the run with runId")
        run_id = running[-1]
    if not isinstance(run_id, str):
        raise bad_request("runId must be a string", "bad_run_id")
    return await interrupt_run(access, run_id)


class _Export:
    """`{sessionId, projectName, exportDate, hasLegacy, aguiEvents, legacyMessages?}`, streamed.

    Events are spliced from the log through a reader and legacy messages from
    `messages.jsonl.migrated` line by line, so memory stays at one chunk whatever the size.
    """

    def __init__(self, project: str, session: str, reader: LogReader, legacy: Path | None, frame_bytes: int) -> None:
        self.project, self.session, self.reader, self.legacy = project, session, reader, legacy
        self.frame_bytes = frame_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def body(data: bytes) -> None:
            await send({"type": "http.response.body", "body": data, "more_body": True})

        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"application/json"),
            (b"content-disposition", b'attachment; filename="%s-export.json"' % self.session.encode()),
        ]})
        head = orjson.dumps({
            "sessionId": self.session, "projectName": self.project,
            "exportDate": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "hasLegacy": self.legacy is not None,
        })
        await body(head[:-1] + b',"aguiEvents":[')
        sep = b""
        while items := await self.reader.read(self.frame_bytes * 4):
            for item in items:
                if isinstance(item, Batch):
                    await body(sep + item.data.replace(b"\n", b","))
                    sep = b","
        await body(b"]")
        if self.legacy is not None:
            await body(b',"legacyMessages":[')
            sep = b""
            async for line in _json_lines(self.legacy):
                await body(sep + line)
                sep = b","
            await body(b"]")
        await send({"type": "http.response.body", "body": b"}", "more_body": False})


async def _json_lines(path: Path) -> AsyncIterator[bytes]:
    """The lines of a JSONL file that are valid JSON, read a chunk at a time."""
    carry = b""
    async with await anyio.open_file(path, "rb", opener=nofollow) as fh:
        while chunk := await fh.read(LEGACY_CHUNK):
            *lines, carry = (carry + chunk).split(b"\n")
            for line in lines:
                if _valid(line):
                    yield line.strip()
    if _valid(carry):
        yield carry.strip()


def _valid(line: bytes) -> bool:
    if not line.strip():
        return False
    try:
        orjson.loads(line)
    except orjson.JSONDecodeError:
        return False
    return True


@operation(access="session", answers={200: json_answer("the session, streamed", obj(
    ("sessionId", "projectName", "exportDate", "hasLegacy", "aguiEvents"), sessionId=NAME, projectName=NAME,
    exportDate=STRING, hasLegacy={"type": "boolean"}, aguiEvents={"type": "array", "items": ref("Event")},
    legacyMessages={"type": "array"}))})
async def export(request: Request) -> Response | _Export:
    access = await session_access(request, READ)
    flog = await access.log()
    reader = LogReader(flog)
    await reader.seek()
    legacy = flog.dir / f"{LEGACY_NAME}.migrated"
    if await anyio.Path(legacy).is_symlink():
        raise LinkRefused(f"{legacy} is a symbolic link; refusing to follow it out of the session folder")
    has_legacy = await anyio.Path(legacy).is_file()
    return _Export(access.project, access.session, reader, legacy if has_legacy else None,
                   access.gw.settings.frame_bytes)


def session_item(info: SessionInfo) -> dict[str, object]:
    """The fields of an `AgenticSession` object that the platform's session list shows."""
    return {
        "metadata": {"name": info.name, "namespace": info.project, "creationTimestamp": info.created},
        "spec": {"displayName": info.display_name},
        "status": {"phase": info.phase},
    }


@operation(access="project", params=(LIMIT, query("offset", INTEGER, "default 0"), SEARCH),
           answers={200: json_answer("a page of the project's sessions, newest first", obj(
               ("items", "totalCount", "limit", "offset", "hasMore", "nextOffset"),
               items={"type": "array", "items": obj(("metadata", "spec", "status"))}, totalCount=INTEGER,
               limit=INTEGER, offset=INTEGER, hasMore={"type": "boolean"}, nextOffset=nullable(INTEGER)))})
async def list_sessions(request: Request) -> Response:
    """GET agentic-sessions: offset pages, newest first, with the total count."""
    gw, project, query, limit, unclaimed = await listing(request)
    offset = int_param(query, "offset", 0, 0)
    page = await gw.catalog.offset_page(project, limit, offset, query.get("search") or None, unclaimed=unclaimed)
    gw.caches.listed(project, [info.name for info in page.items if info.claimed])
    more = offset + len(page.items) < page.total
    return JSONResponse({
        "items": [session_item(info) for info in page.items],
        "totalCount": page.total,
        "limit": limit,
        "offset": offset,
        "hasMore": more,
        "nextOffset": offset + len(page.items) if more else None,
    })


def routes() -> list[BaseRoute]:
    return [
        Route(BASE, list_sessions, methods=["GET"]),
        Route(SESSION + "/agui/events", agui_events, methods=["GET"]),
        Route(SESSION + "/agui/run", agui_run, methods=["POST"]),
        Route(SESSION + "/agui/interrupt", agui_interrupt, methods=["POST"]),
        Route(SESSION + "/agui/feedback", post_feedback, methods=["POST"]),
        Route(SESSION + "/agui/capabilities", get_capabilities, methods=["GET"]),
        Route(SESSION + "/export", export, methods=["GET"]),
    ]
