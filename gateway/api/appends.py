"""HTTP appends: a plain POST (all or nothing), a streaming POST (`?stream=1`); WebSocket ones are in ws_appends.py.

Big bodies are never parsed on the event loop: a piece of a body over `INLINE_BYTES` is validated
in a worker thread, and at most `APPEND_PARSERS` requests at once do that (the others wait with
their bodies unread, so the socket, not the gateway, holds them). A plain POST keeps its parser
slot until its one append is written, which bounds the memory of big all-or-nothing bodies; a
streaming POST keeps one chunk and one unfinished line, whatever its length.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import anyio
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from gateway.api.access import SessionAccess
from gateway.api.bodies import (
    JSON_TYPES,
    NDJSON_TYPES,
    NdjsonLines,
    no_events,
    parse_events,
    unsupported_media,
)
from gateway.api.errors import HANDLED, ApiError, api_error, bad_request, shutting_down
from gateway.runtime import Gateway
from gateway.store.base import AppendResult, SessionLog
from gateway.store.cursor import format_cursor

log = logging.getLogger("gateway.append")

INLINE_BYTES = 64 * 1024
"""Body pieces up to this size are validated on the event loop (a few ms at most)."""
DRAIN_SECONDS = 2.0
"""After a streaming append fails, how long the rest of the body is read and dropped before the
answer, so that closing the connection does not reset it (and lose the answer) under a client
that is still sending."""


def created(result: AppendResult, count: int) -> JSONResponse:
    return JSONResponse({"first": format_cursor(result.epoch, result.first),
                         "last": format_cursor(result.epoch, result.last), "count": count}, status_code=201)


async def _chunks(request: Request) -> AsyncIterator[bytes]:
    try:
        async for chunk in request.stream():
            if chunk:
                yield chunk
    except ClientDisconnect:
        raise bad_request("client disconnected before sending the whole body", "client_gone") from None


async def off_loop(gw: Gateway, parse: Callable[[bytes], Any], data: bytes, *, held: bool = False) -> Any:
    """`parse(data)`, in a worker thread under the parser limit when `data` is big."""
    if len(data) <= INLINE_BYTES:
        return parse(data)
    if held:
        return await anyio.to_thread.run_sync(parse, data)
    async with gw.parsers:
        return await anyio.to_thread.run_sync(parse, data)


async def append_plain(request: Request, access: SessionAccess, media: str) -> Response:
    """All or nothing: the whole body is validated before its one append."""
    gw, limit = access.gw, access.gw.settings.max_body_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, "body_too_large", f"request body of {declared} bytes is over the {limit}-byte limit")
    if media not in NDJSON_TYPES and media not in JSON_TYPES and not media.endswith("+json"):
        raise unsupported_media(media)
    ndjson = media in NDJSON_TYPES
    parser = NdjsonLines(gw.settings.max_event_bytes)
    lines: list[bytes] = []
    body: list[bytes] = []
    size = 0
    async with contextlib.AsyncExitStack() as slot:
        held = False
        async for chunk in _chunks(request):
            size += len(chunk)
            if size > limit:
                raise ApiError(413, "body_too_large", f"request body is over the {limit}-byte limit")
            if not held and size > INLINE_BYTES:
                await slot.enter_async_context(gw.parsers)
                held = True
            if not ndjson:
                body.append(chunk)
            elif data := parser.feed(chunk):
                lines += await _valid(gw, parser, data, held=held)
        if ndjson:
            lines += await _valid(gw, parser, parser.finish(), held=held)
        else:
            lines = await off_loop(gw, lambda b: parse_events(b, media, gw.settings.max_event_bytes),
                                   b"".join(body), held=held)
        del body
        if not lines:
            raise no_events()
        result = await (await access.log(create=True, poll=False)).append(lines)
    gw.registry.touch(access.project, access.session)
    return created(result, len(lines))


async def _valid(gw: Gateway, parser: NdjsonLines, data: bytes, *, held: bool) -> list[bytes]:
    lines, error = await off_loop(gw, parser.validate, data, held=held)
    if error is not None:
        raise error
    assert isinstance(lines, list)
    return lines


@dataclass
class _Stored:
    """What a streaming append has stored so far."""

    log: SessionLog | None = None
    epoch: str | None = None
    first: int | None = None
    last: int | None = None
    count: int = 0

    def add(self, result: AppendResult, count: int) -> None:
        """Count an append; one that landed in a new epoch (the log was reset under the stream) is
        all that the new log holds of the stream, and ends it."""
        if self.epoch not in (None, result.epoch):
            self.lost(result.epoch)
            self.first, self.last, self.count = result.first, result.last, count
            raise _reset()
        if self.epoch is None:
            self.epoch, self.first = result.epoch, result.first
        self.last, self.count = result.last, self.count + count

    def lost(self, epoch: str) -> None:
        """The log got `epoch`: nothing stored before is in it."""
        self.epoch, self.first, self.last, self.count = epoch, None, None, 0

    def cursor(self, seq: int | None) -> str | None:
        return None if seq is None or self.epoch is None else format_cursor(self.epoch, seq)


async def append_stream(request: Request, access: SessionAccess, media: str) -> Response:
    """`?stream=1`: each complete NDJSON line is appended as it arrives (what arrived together is one
    append, so one group-committed fsync covers it); visible to followers once durable."""
    if media not in NDJSON_TYPES:
        raise ApiError(415, "unsupported_media_type",
                       f"a streaming append takes application/x-ndjson, not {media!r}")
    gw = access.gw
    parser = NdjsonLines(gw.settings.max_event_bytes)
    stored = _Stored()
    body = _chunks(request)
    try:
        async for chunk in body:
            if gw.draining.is_set():
                raise shutting_down()
            if data := parser.feed(chunk):
                await _store(gw, access, parser, data, stored)
        await _store(gw, access, parser, parser.finish(), stored)
    except HANDLED as exc:
        return await _stopped(body, access, api_error(exc), stored)
    if not stored.count:
        raise no_events()
    return JSONResponse({"first": stored.cursor(stored.first), "last": stored.cursor(stored.last),
                         "count": stored.count}, status_code=201)


async def _store(gw: Gateway, access: SessionAccess, parser: NdjsonLines, data: bytes, stored: _Stored) -> None:
    """Validate `data` (whole lines) and append its events up to the first bad one, which ends the stream.

    The log is opened at the first event, so a stream that stores nothing creates no session.
    """
    if not data:
        return
    lines, error = await off_loop(gw, parser.validate, data)
    if lines:
        flog = stored.log = stored.log or await access.log(create=True, poll=False)
        if stored.epoch not in (None, flog.epoch):
            stored.lost(flog.epoch)
            raise _reset()
        stored.add(await flog.append(lines), len(lines))
        gw.registry.touch(access.project, access.session)
    if error is not None:
        raise error


def _reset() -> ApiError:
    return ApiError(409, "session_reset", "the session's log was reset (deleted or replaced) while this stream "
                    "appended: what it stored before went with the old log; `stored` counts what the new log holds")


async def _stopped(body: AsyncIterator[bytes], access: SessionAccess, err: ApiError, stored: _Stored) -> Response:
    """The answer of a streaming append that failed part way: the error, and what is stored."""
    log.warning("streaming append stopped: %s", err.message, extra={
        "project": access.project, "session": access.session, "code": err.code, "stored": stored.count,
        "last": stored.cursor(stored.last)})
    if err.code != "client_gone":
        with anyio.move_on_after(DRAIN_SECONDS), contextlib.suppress(ApiError):
            async for _ in body:
                pass
    return JSONResponse({"error": {"code": err.code, "message": err.message, "stored": stored.count,
                                   "first": stored.cursor(stored.first), "last": stored.cursor(stored.last)}},
                        status_code=err.status)
