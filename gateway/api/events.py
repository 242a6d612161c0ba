"""The events resource: stream (SSE, NDJSON), append, delete, export, and session status."""

from __future__ import annotations

import json
import math
from typing import Any

import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from gateway.api.access import DELETE, READ, WRITE, session_access
from gateway.api.errors import ApiError, bad_request
from gateway.api.streams import open_stream
from gateway.store.cursor import format_cursor
from gateway.store.lines import no_constants, one_line
from gateway.stream.framing import Batch, NdjsonEncoder, SseEncoder
from gateway.stream.reader import LogReader
from gateway.transports.http_stream import EventStreamResponse

_JSON_TYPES = ("application/json", "text/json")
_NDJSON_TYPES = ("application/x-ndjson", "application/jsonl", "application/json-seq")


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


def _check_event(i: int, event: Any, line: bytes, max_event_bytes: int, where: str = "") -> bytes:
    if not isinstance(event, dict) or not isinstance(event.get("type"), str):
        at = f" ({where})" if where else ""
        raise bad_request(f"event {i}{at} is not a JSON object with a string 'type'", "bad_event")
    if len(line) > max_event_bytes:
        raise ApiError(413, "event_too_large",
                       f"event {i} is {len(line)} bytes, over GATEWAY_MAX_EVENT_BYTES={max_event_bytes}")
    return line


def parse_events(body: bytes, content_type: str, max_event_bytes: int) -> list[bytes]:
    """Validate an append body into the lines to store: every item an object with a string `type`.

    Every item is stored exactly as sent (objects of an array too: their text is cut out of the
    body, never re-encoded), so numbers beyond 64 bits, escapes and every other detail survive.
    Only line breaks are removed, which JSON allows solely as whitespace between tokens.
    """
    media = content_type.split(";", 1)[0].strip().lower()
    lines: list[bytes] = []
    if media in _NDJSON_TYPES:
        for n, raw in enumerate(body.split(b"\n"), start=1):
            raw = raw.strip(_WS_BYTES)
            if raw:
                event = _parse(raw, f"line {n}")
                lines.append(_check_event(len(lines), event, one_line(raw), max_event_bytes, f"line {n}"))
    elif media in _JSON_TYPES or media.endswith("+json"):
        text = _decode(body, "body").strip(_WS)
        if text[:1] == "[":
            for i, (item, raw_item) in enumerate(_array_items(text)):
                lines.append(_check_event(i, item, one_line(raw_item.encode()), max_event_bytes))
        else:
            lines.append(_check_event(0, _parse(body, "body"), one_line(text.encode()), max_event_bytes))
    else:
        raise ApiError(415, "unsupported_media_type",
                       f"content type {media!r} not accepted: use application/json or application/x-ndjson")
    if not lines:
        raise bad_request("no events in the body", "no_events")
    return lines


_WS = " \t\r\n"
_WS_BYTES = _WS.encode()


def _finite(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"number {text[:32]} is out of range (Infinity is not JSON)")
    return value


_DECODER = json.JSONDecoder(parse_constant=no_constants, parse_float=_finite)


def _decode(raw: bytes, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise bad_request(f"{what} is not valid JSON: not UTF-8 ({exc})", "bad_json") from None


def _parse(raw: bytes, what: str) -> Any:
    text = _decode(raw, what)
    try:
        value, end = _DECODER.raw_decode(text, len(text) - len(text.lstrip(_WS)))
        if text[end:].strip(_WS):
            raise json.JSONDecodeError("Extra data", text, end)
        return value
    except (ValueError, RecursionError) as exc:
        raise bad_request(f"{what} is not valid JSON: {exc}", "bad_json") from None


def _skip_ws(text: str, i: int) -> int:
    n = len(text)
    while i < n and text[i] in _WS:
        i += 1
    return i


def _array_items(text: str) -> list[tuple[Any, str]]:
    """The items of the JSON array `text` (which starts with '['), each with its exact text."""
    items: list[tuple[Any, str]] = []
    i = _skip_ws(text, 1)
    try:
        if text[i : i + 1] == "]":
            i += 1
        else:
            while True:
                value, end = _DECODER.raw_decode(text, i)
                items.append((value, text[i:end]))
                i = _skip_ws(text, end)
                sep = text[i : i + 1]
                i = _skip_ws(text, i + 1)
                if sep == "]":
                    break
                if sep != ",":
                    raise json.JSONDecodeError("Expecting ',' delimiter", text, i)
        if _skip_ws(text, i) != len(text):
            raise json.JSONDecodeError("Extra data", text, i)
    except (ValueError, RecursionError) as exc:
        raise bad_request(f"body is not valid JSON: {exc}", "bad_json") from None
    return items


async def append_events(request: Request) -> Response:
    access = await session_access(request, WRITE)
    settings = access.gw.settings
    body = await read_body(request, settings.max_body_bytes)
    lines = parse_events(body, request.headers.get("content-type", ""), settings.max_event_bytes)
    result = await (await access.log(create=True)).append(lines)
    access.gw.registry.touch(access.project, access.session)
    return JSONResponse(
        {
            "first": format_cursor(result.epoch, result.first),
            "last": format_cursor(result.epoch, result.last),
            "count": len(lines),
        },
        status_code=201,
    )


async def delete_events(request: Request) -> Response:
    access = await session_access(request, DELETE)
    epoch = await (await access.log()).delete()
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


async def export_events(request: Request) -> Response | _ExportResponse:
    access = await session_access(request, READ)
    fmt = request.query_params.get("format", "jsonl")
    if fmt not in ("json", "jsonl"):
        raise bad_request(f"format must be json or jsonl, got {fmt[:32]!r}")
    reader = LogReader(await access.log())
    await reader.seek()
    return _ExportResponse(reader, fmt, f"{access.session}.{fmt}", access.gw.settings.frame_bytes)


async def session_status(request: Request) -> Response:
    access = await session_access(request, READ)
    gw, flog = access.gw, await access.log()
    entry = gw.registry.entry(access.project, access.session)
    return JSONResponse({
        "project": access.project,
        "session": access.session,
        "epoch": flog.epoch,
        "head": format_cursor(flog.epoch, flog.lines) if flog.lines else None,
        "events": flog.lines,
        "bytes": flog.end,
        "skipped": flog.bad_lines,
        "connections": entry.open_connections if entry else 0,
        "lastSeen": entry.last_seen if entry else flog.last_append_ms,
        "agentStatus": await gw.runs.status(flog),
    })
