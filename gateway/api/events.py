"""The events resource: stream (SSE, NDJSON), append, delete, export, and session status."""

from __future__ import annotations

import anyio.to_thread
import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from gateway.api.access import DELETE, READ, WRITE, session_access
from gateway.api.appends import append_plain, append_stream
from gateway.api.bodies import media_of
from gateway.api.errors import ApiError, bad_request
from gateway.api.spec import (
    EPOCH,
    EVENTS_BODY,
    FLAG,
    INTEGER,
    NAME,
    NDJSON,
    SSE,
    STREAM_PARAMS,
    STRING,
    Link,
    answer,
    json_answer,
    ndjson_of,
    nullable,
    obj,
    operation,
    query,
    ref,
)
from gateway.api.streams import open_stream, parse_flag
from gateway.store.base import SessionLog
from gateway.store.cursor import format_cursor
from gateway.store.layout import kept_last_seen
from gateway.stream.framing import Batch, NdjsonEncoder, SseEncoder
from gateway.stream.reader import LogReader
from gateway.transports.http_stream import EventStreamResponse


@operation(access="session", params=STREAM_PARAMS, answers={200: answer(
    "the events from the start position (NDJSON unless `Accept: text/event-stream`)",
    {NDJSON: ndjson_of(ref("NdjsonLine")), SSE: ref("SseEvent")})})
async def stream_events(request: Request) -> Response | EventStreamResponse:
    """GET .../events: SSE when asked for text/event-stream, NDJSON otherwise (follow=0 default)."""
    sse = "text/event-stream" in request.headers.get("accept", "")
    opened = await open_stream(request, "sse" if sse else "ndjson", default_follow=sse,
                               last_event_id=request.headers.get("last-event-id") if sse else None)
    reader, streams, follow = opened.reader, opened.access.gw.streams, opened.request.follow
    if sse:
        preamble = SseEncoder.RETRY + (b": reset epoch=%s\n\n" % reader.epoch.encode() if opened.reset else b"")
        return EventStreamResponse(streams, opened.conn, reader, SseEncoder(), media_type="text/event-stream",
                                   follow=follow, preamble=preamble)
    preamble = orjson.dumps({"reset": {"epoch": reader.epoch}}) + b"\n" if opened.reset else b""
    return EventStreamResponse(streams, opened.conn, reader, NdjsonEncoder(), media_type="application/x-ndjson",
                               follow=follow, preamble=preamble)


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, "body_too_large", f"request body of {declared} bytes is over the {limit}-byte limit")
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ApiError(413, "body_too_large", f"request body is over the {limit}-byte limit")
            chunks.append(chunk)
    except ClientDisconnect:
        raise bad_request("client disconnected before sending the whole body") from None
    return b"".join(chunks)


SESSION_PARAMS = {"path.project": "$request.path.project", "path.session": "$request.path.session"}


@operation(
    access="session", errors=(507,),
    params=(query("stream", FLAG, "1: NDJSON lines appended as they arrive (not all or nothing)"),),
    body={"application/json": EVENTS_BODY, NDJSON: {"type": "string", "description": "one event per line"}},
    answers={201: json_answer("stored: the cursors of the first and last event", ref("Appended"))},
    links={"ReadAppended": Link(stream_events, {**SESSION_PARAMS, "query.after": "$response.body#/first"},
                                "the events after the first one appended"),
           "ReadAfterLast": Link(stream_events, {**SESSION_PARAMS, "query.after": "$response.body#/last"},
                                 "the events after this append: none until the next one")})
async def append_events(request: Request) -> Response:
    """POST .../events: all or nothing, or with `?stream=1` each line as it arrives (gateway/api/appends.py)."""
    access = await session_access(request, WRITE)
    media = media_of(request.headers.get("content-type", ""))
    if parse_flag(request.query_params, "stream", False):
        return await append_stream(request, access, media)
    return await append_plain(request, access, media)


@operation(access="session", errors=(507,), answers={200: json_answer(
    "the log is dropped; the next append starts the new epoch",
    obj(("project", "session", "epoch"), project=NAME, session=NAME, epoch=EPOCH))})
async def delete_events(request: Request) -> Response:
    access = await session_access(request, DELETE)
    epoch = await (await access.log(claim=True)).delete()
    return JSONResponse({"project": access.project, "session": access.session, "epoch": epoch})


class _ExportResponse:
    """The whole log streamed through a reader (never materialized), skipped lines left out."""

    def __init__(self, reader: LogReader, fmt: str, filename: str, frame_bytes: int) -> None:
        self.reader, self.fmt, self.filename, self.frame_bytes = reader, fmt, filename, frame_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        media = b"application/json" if self.fmt == "json" else b"application/x-ndjson"
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", media),
            (b"content-disposition", b'attachment; filename="%s"' % self.filename.encode()),
        ]})
        first = True
        if self.fmt == "json":
            await send({"type": "http.response.body", "body": b"[", "more_body": True})
        while items := await self.reader.read(self.frame_bytes * 4):
            parts = [item.data for item in items if isinstance(item, Batch)]
            if not parts:
                continue
            if self.fmt == "json":
                body = (b"" if first else b",") + b",".join(p.replace(b"\n", b",") for p in parts)
            else:
                body = b"\n".join(parts) + b"\n"
            first = False
            await send({"type": "http.response.body", "body": body, "more_body": True})
        await send({"type": "http.response.body", "body": b"]" if self.fmt == "json" else b"", "more_body": False})


@operation(access="session", params=(query("format", {"enum": ["json", "jsonl"]}, "default jsonl"),),
           answers={200: answer("the whole log, streamed, skipped lines left out",
                                {"application/json": {"type": "array", "items": ref("Event")},
                                 NDJSON: ndjson_of(ref("Event"))},
                                content_disposition=STRING)})
async def export_events(request: Request) -> Response | _ExportResponse:
    access = await session_access(request, READ)
    fmt = request.query_params.get("format", "jsonl")
    if fmt not in ("json", "jsonl"):
        raise bad_request(f"format must be json or jsonl, got {fmt[:32]!r}")
    reader = LogReader(await access.log())
    await reader.seek()
    return _ExportResponse(reader, fmt, f"{access.session}.{fmt}", access.gw.settings.frame_bytes)


async def _kept_last_seen(flog: SessionLog) -> int | None:
    """lastSeen of a session no stream of this server has open: kept in its meta.json, or its
    last append here (store=nats keeps lastSeen in its bucket)."""
    kept = await anyio.to_thread.run_sync(kept_last_seen, flog.dir)
    return max(kept or 0, flog.last_append_ms or 0) or None


@operation(access="session", answers={200: json_answer("the session's status", obj(
    ("project", "session", "epoch", "head", "events", "bytes", "skipped", "connections", "lastSeen", "agentStatus"),
    project=NAME, session=NAME, epoch=EPOCH, head=nullable(ref("Cursor")), events=INTEGER, bytes=INTEGER,
    skipped=INTEGER, connections=INTEGER, lastSeen=nullable(INTEGER),
    agentStatus={"enum": ["working", "idle", "waiting_input"]}))})
async def session_status(request: Request) -> Response:
    access = await session_access(request, READ)
    gw, flog = access.gw, await access.log()
    connections, last_seen = gw.liveness(access.project, access.session)
    if gw.nats_liveness is not None:  # store=nats: every replica's clients
        connections, last_seen = await gw.nats_liveness.read(access.project, access.session)
    return JSONResponse({
        "project": access.project,
        "session": access.session,
        "epoch": flog.epoch,
        "head": format_cursor(flog.epoch, flog.lines) if flog.lines else None,
        "events": flog.lines,
        "bytes": flog.end,
        "skipped": flog.bad_lines,
        "connections": connections,
        "lastSeen": last_seen if last_seen is not None else await _kept_last_seen(flog),
        "agentStatus": await gw.runs.status(flog),
    })
