"""WebSocket appends: `{"append": [events]}` messages on an events WebSocket, answered in order.

The events follow the rules of a POST with a JSON array body (`gateway.api.appends`).
"""

from __future__ import annotations

import asyncio
import re
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.websockets import WebSocketDisconnect

from gateway.api.access import WRITE, SessionAccess, authorize
from gateway.api.appends import off_loop
from gateway.api.bodies import parse_json_body
from gateway.api.errors import HANDLED, api_error, bad_request, shutting_down
from gateway.store.base import AppendResult, SessionLog, Written
from gateway.store.cursor import format_cursor

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
    append is durable (or failed).

    After the first, an append is taken by `take_now` where it can be, as the transport cuts the
    message from the stream. An answer is written by `send_now` from the end of the commit
    cycle that made its append durable when the connection takes it at once, else by `send`
    from a task that runs only while such answers are owed (the stream's guarded send: the send
    watchdog ends a stream whose client does not take its answers either, with no cancel scope
    per answer).
    """

    __slots__ = ("access", "allowed", "answering", "headers", "log", "open", "pending", "query", "room", "send",
                 "send_now", "waiting")

    def __init__(self, access: SessionAccess, headers: Any, query: Any,
                 send: Callable[[bytes], Awaitable[None]]) -> None:
        self.access, self.headers, self.query, self.send = access, headers, query, send
        self.allowed = False
        self.log: SessionLog | None = None  # the log of the last append (`take_now` writes only to it)
        # Appends started and not answered (work, error answer or event count); made at the
        # first append: a follower that never appends holds no deque.
        self.pending: deque[_Owed] | None = None
        self.answering: asyncio.Task[None] | None = None  # sends what `send_now` could not
        self.waiting = False  # the oldest owed append will call `_resume` once it may be settled
        self.send_now: Callable[[bytes], bool] = _cannot  # an answer written at once, if the connection takes it
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
        self._owe()
        while len(pending) >= PIPELINE and (self.answering is not None or self.waiting):
            self.room = asyncio.get_running_loop().create_future()
            await self.room

    def take_now(self, text: str) -> bool:
        """`take` if it needs no wait, else False with nothing done (the message then goes to the
        app's receive loop and `take`): the first append (the credential is checked, the log
        opened), a pipeline that would be full, a stream that is over, a drain, another log
        under the session's name (reset or evicted), or a write that would wait (`write_now`)."""
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
        self._owe()
        return True

    def _owe(self) -> None:
        if self.answering is not None:
            self._sync_the_rest()
        elif not self.waiting:
            self._answer_now()

    def _sync_the_rest(self) -> None:
        """While a task sends the answers (the client is slow to read them), the appends owed still
        join the next commit cycle, so they become durable and visible without waiting for their
        answer's turn: a cycle takes all that their log holds, so the newest one's join will do."""
        newest = self.pending[-1][0] if self.pending else None
        if newest is not None:
            newest.then(_nothing)

    def _answer_now(self) -> None:
        """Send the owed answers whose appends are settled, in order and with no task: from the
        receive path, or from the end of the commit cycle that made the oldest one durable
        (`then`), as long as the connection takes each at once; a send that would wait leaves
        the rest to `_answer_all`'s task."""
        pending = self.pending
        assert pending is not None
        while pending:
            written, what = pending[0]
            answer = what if written is None else self._settled(written, what)
            if answer is None:
                assert written is not None
                self.waiting = True
                written.then(self._resume)
                return
            assert isinstance(answer, bytes)
            if self.open and not self.send_now(answer):
                self.answering = asyncio.get_running_loop().create_task(self._answer_all(pending, self.send))
                self._sync_the_rest()
                return
            pending.popleft()
            self._make_room()

    def _resume(self) -> None:
        self.waiting = False
        self._answer_now()

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
        return self._appended(result, what)

    def _settled(self, written: Written, what: bytes | int) -> bytes | None:
        try:
            result = written.settled()
        except HANDLED as exc:
            return _error_answer(exc)
        return None if result is None else self._appended(result, what)

    def _appended(self, result: AppendResult, what: bytes | int) -> bytes:
        access = self.access
        access.gw.registry.touch(access.project, access.session)
        return orjson.dumps({"control": "appended", "first": format_cursor(result.epoch, result.first),
                             "last": format_cursor(result.epoch, result.last), "count": what})

    def _make_room(self) -> None:
        if self.room is not None and not self.room.done():
            self.room.set_result(None)

    def close(self) -> None:
        """The connection is over: answers still owed are not sent, but the appends written still
        become durable (like a POST whose client left)."""
        self.open = False


def _cannot(_answer: bytes) -> bool:
    return False


def _nothing() -> None:
    pass


def _error_answer(exc: Exception) -> bytes:
    err = api_error(exc)
    return orjson.dumps({"control": "error", "status": err.status, "code": err.code, "message": err.message})
