"""The events resource: stream (SSE, NDJSON), append, delete, export, and session status."""

from __future__ import annotations

import json
from typing import Any

import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from gateway.api.access import DELETE, READ, WRITE, authorize
from gateway.api.errors import ApiError, bad_request
from gateway.api.streams import open_log, open_stream, parse_names, parse_stream_request
from gateway.runtime import Gateway
from gateway.store.base import StoreError
from gateway.store.cursor import format_cursor
from gateway.stream.framing import Batch, NdjsonEncoder, SseEncoder
from gateway.stream.reader import LogReader
from gateway.transports.http_stream import EventStreamResponse

_JSON_TYPES = ("application/json", "text/json")
_NDJSON_TYPES = ("application/x-ndjson", "application/jsonl", "application/json-seq")


def _gw(request: Request) -> Gateway:
    gw: Gateway = request.app.state.gateway
    return gw


async def stream_events(request: Request) -> Response | EventStreamResponse:
    """GET .../events: SSE when asked for text/event-stream, NDJSON otherwise (follow=0 default)."""
    sse = "text/event-stream" in request.headers.get("accept", "")
    req = parse_stream_request(
        request.path_params, request.query_params, default_follow=sse,
        last_event_id=request.headers.get("last-event-id") if sse else None,
    )
    gw = _gw(request)
    reader, reset, conn = await open_stream(gw, req, "sse" if sse else "ndjson", request.headers,
                                            request.query_params)
    if sse:
        preamble = SseEncoder.RETRY + (b": reset epoch=%s\n\n" % reader.epoch.encode() if reset else b"")
        return EventStreamResponse(gw, conn, reader, SseEncoder(), media_type="text/event-stream",
                                   follow=req.follow, preamble=preamble)
    preamble = orjson.dumps({"reset": {"epoch": reader.epoch}}) + b"\n" if reset else b""
    return EventStreamResponse(gw, conn, reader, NdjsonEncoder(), media_type="application/x-ndjson",
                               follow=req.follow, preamble=preamble)


async def _read_body(request: Request, limit: int) -> bytes:
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


def _check_event(i: int, event: Any, line: bytes, max_event_bytes: int) -> bytes:
    if not isinstance(event, dict) or not isinstance(event.get("type"), str):
        raise bad_request(f"event {i} is not a JSON object with a string 'type'", "bad_event")
    if len(line) > max_event_bytes:
        raise ApiError(413, "event_too_large",
                       f"event {i} is {len(line)} bytes, over GATEWAY_MAX_EVENT_BYTES={max_event_bytes}")
    return line


def parse_events(body: bytes, content_type: str, max_event_bytes: int) -> list[bytes]:
    """Validate an append body into the lines to store: every item an object with a string `type`.

    Objects are stored as sent (only line breaks, which JSON allows solely as whitespace, are
    removed), so numbers beyond 64 bits and every other detail survive; items of an array are
    re-encoded by the standard library, which is exact.
    """
    media = content_type.split(";", 1)[0].strip().lower()
    lines: list[bytes] = []
    if media in _NDJSON_TYPES:
        for n, raw in enumerate(body.split(b"\n"), start=1):
            raw = raw.strip()
            if raw:
                lines.append(_check_event(len(lines), _parse(raw, f"line {n}"), raw, max_event_bytes))
    elif media in _JSON_TYPES or media.endswith("+json"):
        stripped = body.strip()
        if stripped[:1] == b"[":
            items = _parse(stripped, "body")
            for i, item in enumerate(items):
                line = json.dumps(item, separators=(",", ":"), ensure_ascii=False).encode()
                lines.append(_check_event(i, item, line, max_event_bytes))
        else:
            flat = stripped.replace(b"\r", b"").replace(b"\n", b"")
            lines.append(_check_event(0, _parse(stripped, "body"), flat, max_event_bytes))
    else:
        raise ApiError(415, "unsupported_media_type",
                       f"content type {media!r} not accepted: use application/json or application/x-ndjson")
    if not lines:
        raise bad_request("no events in the body", "no_events")
    return lines


def _parse(raw: bytes, what: str) -> Any:
    try:
        return json.loads(raw, parse_constant=_no_constants)
    except (ValueError, RecursionError) as exc:
        raise bad_request(f"{what} is not valid JSON: {exc}", "bad_json") from None


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


async def append_events(request: Request) -> Response:
    project, session = parse_names(request.path_params)
    gw = _gw(request)
    if gw.draining.is_set():
        raise ApiError(503, "shutting_down", "the gateway is shutting down; retry on another instance")
    await authorize(gw, request.headers, request.query_params, project, WRITE)
    body = await _read_body(request, gw.settings.max_body_bytes)
    lines = parse_events(body, request.headers.get("content-type", ""), gw.settings.max_event_bytes)
    flog = await open_log(gw, project, session, create=True)
    try:
        result = await flog.append(lines)
    except StoreError as exc:
        raise ApiError.from_store(exc) from exc
    gw.registry.touch(project, session)
    return JSONResponse(
        {
            "first": format_cursor(result.epoch, result.first),
            "last": format_cursor(result.epoch, result.last),
            "count": len(lines),
        },
        status_code=201,
    )


async def delete_events(request: Request) -> Response:
    project, session = parse_names(request.path_params)
    gw = _gw(request)
    await authorize(gw, request.headers, request.query_params, project, DELETE)
    flog = await open_log(gw, project, session)
    try:
        epoch = await flog.delete()
    except StoreError as exc:
        raise ApiError.from_store(exc) from exc
    return JSONResponse({"project": project, "session": session, "epoch": epoch})


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


async def export_events(request: Request) -> Response | _ExportResponse:
    project, session = parse_names(request.path_params)
    fmt = request.query_params.get("format", "jsonl")
    if fmt not in ("json", "jsonl"):
        raise bad_request(f"format must be json or jsonl, got {fmt[:32]!r}")
    gw = _gw(request)
    await authorize(gw, request.headers, request.query_params, project, READ)
    reader = LogReader(await open_log(gw, project, session))
    await reader.seek()
    return _ExportResponse(reader, fmt, f"{session}.{fmt}", gw.settings.frame_bytes)


async def session_status(request: Request) -> Response:
    project, session = parse_names(request.path_params)
    gw = _gw(request)
    await authorize(gw, request.headers, request.query_params, project, READ)
    flog = await open_log(gw, project, session)
    entry = gw.registry.entry(project, session)
    return JSONResponse({
        "project": project,
        "session": session,
        "epoch": flog.epoch,
        "head": format_cursor(flog.epoch, flog.lines) if flog.lines else None,
        "events": flog.lines,
        "bytes": flog.end,
        "skipped": flog.bad_lines,
        "connections": entry.open_connections if entry else 0,
        "lastSeen": entry.last_seen if entry else flog.last_append_ms,
        "agentStatus": await gw.runs.status(flog),
    })
