"""Appends: a plain POST (all or nothing), a streaming POST (`?stream=1`), a WebSocket `{"append": [...]}`.

Big bodies are never parsed on the event loop: a piece of a body over `INLINE_BYTES` is validated
in a worker thread, and at most `APPEND_PARSERS` requests at once do that (the others wait with
their bodies unread, so the socket, not the gateway, holds them). A plain POST keeps its parser
slot until its one append is written, which bounds the memory of big all-or-nothing bodies; a
streaming POST keeps one chunk and one unfinished line, whatever its length.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio
import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.websockets import WebSocketDisconnect

from gateway.api.access import WRITE, SessionAccess, authorize
from gateway.api.bodies import (
    JSON_TYPES,
    NDJSON_TYPES,
    NdjsonLines,
    no_events,
    parse_events,
    parse_json_body,
    unsupported_media,
)
from gateway.api.errors import HANDLED, ApiError, api_error, bad_request, shutting_down
from gateway.runtime import Gateway
from gateway.store.base import AppendResult, SessionLog, Written
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


_APPEND = re.compile(r"\s*\{\s*\"append\"\s*:")
_APPEND_ARRAY = re.compile(r"\s*\{\s*\"append\"\s*:\s*(\[.*\])\s*\}\s*", re.DOTALL)


def is_append(text: str) -> bool:
    return _APPEND.match(text) is not None


_Owed = tuple[Written | None, bytes | int]
"""An answer owed on a WebSocket: the append written and its event count, or an error answer."""

PIPELINE = 64
"""Appends of one WebSocket written and not yet answered; past it the connection is not read
until the oldest is answered, so a client that sends faster than its appends become durable is
held back by TCP, not buffered here."""


class WebSocketAppends:
    """`{"append": [events]}` messages of one WebSocket, answered in order with a control line.

    The events are validated by the rules of a POST with a JSON array body and stored with their
    exact text. The connection's credential must allow writes; it is asked once, at the first append.

    Appends are pipelined: each message is checked and written as it arrives, in the order sent,
    without waiting for the one before to be durable, so the appends a client sends while a
    commit cycle runs share the next one. The answers go out in the same order, each once its
    append is durable (or failed), from one task that runs only while answers are owed.

    After the first, an append is taken by `take_now` where it can be, as the transport cuts the
    message from the stream; the answers are `send`'s (the stream's guarded send: the send
    watchdog ends a stream whose client does not take its answers either, with no cancel
    scope per answer).
    """

    __slots__ = ("access", "allowed", "answering", "headers", "log", "open", "pending", "query", "room", "send")

    def __init__(self, access: SessionAccess, headers: Any, query: Any,
                 send: Callable[[bytes], Awaitable[None]]) -> None:
        self.access, self.headers, self.query, self.send = access, headers, query, send
        self.allowed = False
        self.log: SessionLog | None = None  # the log of the last append (`take_now` writes only to it)
        # Appends started and not answered (work, error answer or event count); made at the
        # first append: a follower that never appends holds no deque.
        self.pending: deque[_Owed] | None = None
        self.answering: asyncio.Task[None] | None = None
        self.room: asyncio.Future[None] | None = None  # the receive loop waits for it when full
        self.open = True  # answers are sent (False once the connection is over)

    async def take(self, text: str) -> None:
        """Check and start the append of one message; its answer is sent later, in order."""
        pending = self.pending
        if pending is None:
            pending = self.pending = deque()
        try:
            self.log, lines = await self._prepare(text)
            pending.append((await self.log.write(lines), len(lines)))
        except HANDLED as exc:
            pending.append((None, _error_answer(exc)))
        self._owe(pending)
        while len(pending) >= PIPELINE and self.answering is not None:
            self.room = asyncio.get_running_loop().create_future()
            await self.room

    def take_now(self, text: str) -> bool:
        """`take` if it needs no wait, else False with nothing done (the message then goes to the
        app's receive loop and `take`): the first append (the credential is checked, the log
        opened), a pipeline that would be full, a stream that is over, a drain, another log under the session's name
        (reset or evicted), or a write that would wait (`write_now`)."""
        flog, pending, gw = self.log, self.pending, self.access.gw
        if (flog is None or pending is None or len(pending) >= PIPELINE - 1 or not self.open or gw.draining.is_set()
                or gw.store.logs.get(self.access.session) is not flog):
            return False
        match = _APPEND_ARRAY.fullmatch(text)
        if match is None:
            return False  # not an append, or a bad one: `take` answers it
        try:
            lines = parse_json_body(match.group(1).encode(), gw.settings.max_event_bytes)
            written = flog.write_now(lines)
            if written is None:
                return False
            pending.append((written, len(lines)))
        except HANDLED as exc:
            pending.append((None, _error_answer(exc)))
        self._owe(pending)
        return True

    def _owe(self, pending: deque[_Owed]) -> None:
        if self.answering is None:
            self.answering = asyncio.get_running_loop().create_task(self._answer_all(pending, self.send))

    async def _prepare(self, text: str) -> tuple[SessionLog, list[bytes]]:
        access = self.access
        gw = access.gw
        if not self.allowed:
            await authorize(gw, self.headers, self.query, access.project, WRITE)
            self.allowed = True
        if gw.draining.is_set():
            raise shutting_down()
        match = _APPEND_ARRAY.fullmatch(text)
        if match is None:
            raise bad_request('an append message is {"append": [event, ...]} and nothing else', "bad_append")
        array = match.group(1).encode()
        lines: list[bytes] = await off_loop(gw, lambda b: parse_json_body(b, gw.settings.max_event_bytes), array)
        return await access.log(create=True, poll=False), lines

    async def _answer_all(self, pending: deque[_Owed], send: Callable[[bytes], Awaitable[None]]) -> None:
        try:
            while pending:
                written, what = pending[0]
                answer = what if written is None else await self._answer(written, what)
                pending.popleft()
                self._make_room()
                assert isinstance(answer, bytes)
                if self.open:
                    try:
                        await send(answer)
                    except (OSError, WebSocketDisconnect):
                        self.open = False  # the client is gone; what it appended still becomes durable
        finally:
            self.answering = None
            self._make_room()

    async def _answer(self, written: Written, what: bytes | int) -> bytes:
        try:
            result = await written.durable()
        except HANDLED as exc:
            return _error_answer(exc)
        access = self.access
        access.gw.registry.touch(access.project, access.session)
        return orjson.dumps({"control": "appended", "first": format_cursor(result.epoch, result.first),
                             "last": format_cursor(result.epoch, result.last), "count": what})

    def _make_room(self) -> None:
        if self.room is not None and not self.room.done():
            self.room.set_result(None)

    def close(self) -> None:
        """The connection is over: answers still owed are not sent, but the task that owes them
        goes on until every append written is durable (like a POST whose client left)."""
        self.open = False


def _error_answer(exc: Exception) -> bytes:
    err = api_error(exc)
    return orjson.dumps({"control": "error", "status": err.status, "code": err.code, "message": err.message})
