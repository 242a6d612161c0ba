"""A session's events as an async iterator that survives drops, restarts and slow-consumer closes.

The stream keeps the cursor of the last item it yielded and reconnects with `after=<cursor>`,
so a consumer sees every event once, in seq order, across any number of reconnections. The
server guarantees that per connection; the stream drops anything at or before its cursor as
well, so even a misbehaving intermediary cannot make it yield an event twice.
"""

from __future__ import annotations

import logging
import random
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal
from urllib.parse import urlencode

import anyio
import httpx
import orjson
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from gateway.client.items import (
    RETRYABLE_STATUS,
    Event,
    GatewayError,
    GatewayUnreachable,
    Live,
    Reset,
    Skipped,
    StreamItem,
    error_from_response,
    split_cursor,
)

log = logging.getLogger("gateway.client")

Transport = Literal["auto", "websocket", "sse"]
"""`auto`: WebSocket, falling back to SSE for good when the upgrade itself is refused (a proxy or
load balancer that does not pass WebSockets answers the handshake with an HTTP status)."""

_NO_UPGRADE = frozenset({200, 400, 404, 405, 426, 501})

RETRY_CLOSE_CODES = frozenset({1001, 1006, 1011, 1012, 1013, 4408})
"""Closes after which resuming makes sense: shutdown, drop, server error, restart, busy, too slow."""

MAX_MESSAGE_BYTES = 32 * 1024 * 1024
"""Largest WebSocket message accepted: one event up to the server's 10 MiB default, with room."""


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with jitter: attempt n waits a random time in [d/2, d], d = initial * 2**(n-1).

    The jitter keeps many clients dropped at once (a gateway restart) from coming back in step.
    """

    initial: float = 0.25
    maximum: float = 15.0

    def delay(self, attempt: int) -> float:
        ceiling = min(self.maximum, self.initial * 2 ** max(0, attempt - 1))
        return random.uniform(ceiling / 2, ceiling)


@dataclass(frozen=True)
class _Hello:
    epoch: str
    head: str | None
    reset: bool


class _Retry(Exception):
    """The connection ended in a way worth resuming from (the reason is kept for logs and tests)."""

    def __init__(self, reason: str, code: int | None = None) -> None:
        super().__init__(reason)
        self.code = code


class _NoWebSocket(Exception):
    """The server (or something in front of it) does not do WebSocket at this URL."""


class EventStream:
    """Iterate with `async for item in stream`; use `async with stream` (or `aclose()`) to stop early.

    Items are `Event`, `Reset` (log restarted: clear what you rendered), `Skipped` and `Live`.
    Attributes a caller may read at any time: `cursor` (last position yielded, pass it as `after`
    to resume later), `epoch`, `head` (last cursor at connect time, from the WebSocket hello;
    None over SSE), `reconnects`, and `closes` (close codes or reasons of dropped connections).
    """

    def __init__(
        self,
        http: httpx.AsyncClient,
        events_url: str,
        *,
        after: str | None = None,
        tail: int | None = None,
        follow: bool = True,
        transport: Transport = "auto",
        headers: dict[str, str] | None = None,
        backoff: Backoff | None = None,
        max_retries: int | None = None,
        read_timeout: float = 60.0,
        view: str | None = None,
    ) -> None:
        self._http = http
        self._url = events_url
        self._tail = tail
        self._follow = follow
        self._view = view
        self._transport = transport
        self._headers = headers or {}
        self._backoff = backoff or Backoff()
        self._max_retries = max_retries
        self._read_timeout = read_timeout
        self.cursor = after
        self.epoch: str | None = split_cursor(after)[0] if after else None
        self._seq = split_cursor(after)[1] if after else 0
        self.head: str | None = None
        self.reconnects = 0
        self.closes: list[int | str] = []
        self._gen: AsyncGenerator[StreamItem, None] | None = None

    def __aiter__(self) -> AsyncIterator[StreamItem]:
        if self._gen is None:
            self._gen = self._run()
        return self._gen

    async def __aenter__(self) -> EventStream:
        return self

    async def __aexit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection now instead of when the iterator is garbage collected."""
        if self._gen is not None:
            await self._gen.aclose()

    async def _run(self) -> AsyncGenerator[StreamItem, None]:
        failures = 0
        while True:
            connection = self._sse() if self._transport == "sse" else self._websocket()
            try:
                async for raw in connection:
                    if isinstance(raw, _Hello):
                        failures = 0
                        self.head = raw.head
                        if raw.reset or (self.epoch is not None and raw.epoch != self.epoch):
                            yield self._reset(raw.epoch)
                        self.epoch = raw.epoch
                        continue
                    for item in self._accept(raw):
                        failures = 0
                        yield item
                return
            except _NoWebSocket as exc:
                log.info("WebSocket upgrade refused (%s); falling back to SSE", exc)
                self._transport = "sse"
            except _Retry as exc:
                self.closes.append(exc.code if exc.code is not None else str(exc))
                failures += 1
                if self._max_retries is not None and failures > self._max_retries:
                    raise GatewayUnreachable(f"{self._url}: {exc} (gave up after {failures} tries)") from exc
                delay = self._backoff.delay(failures)
                log.info("stream interrupted (%s); resuming after %s in %.2fs", exc, self.cursor, delay)
                await anyio.sleep(delay)
                self.reconnects += 1
            finally:
                await connection.aclose()

    def _reset(self, epoch: str) -> Reset:
        self.epoch, self._seq, self.cursor = epoch, 0, None
        return Reset(epoch)

    def _accept(self, item: StreamItem) -> list[StreamItem]:
        """Track the position; drop what was already yielded; turn an unannounced epoch change into Reset."""
        if isinstance(item, Reset):
            return [self._reset(item.epoch)]
        if isinstance(item, Live):
            return [item]
        epoch, seq = split_cursor(item.cursor)
        out: list[StreamItem] = []
        if epoch != self.epoch:
            if self.epoch is not None:
                out.append(self._reset(epoch))
            self.epoch = epoch
        elif seq <= self._seq:
            return out
        self._seq, self.cursor = seq, item.cursor
        out.append(item)
        return out

    def _params(self) -> dict[str, str]:
        params = {"follow": "1" if self._follow else "0"}
        if self._view:
            params["view"] = self._view
        if self.cursor:
            params["after"] = self.cursor
        elif self._tail is not None and self.epoch is None:
            params["tail"] = str(self._tail)
        return params

    async def _websocket(self) -> AsyncGenerator[StreamItem | _Hello, None]:
        url = self._url.replace("http", "ws", 1) + "?" + urlencode(self._params())
        try:
            async with connect(url, compression=None, additional_headers=self._headers,
                               max_size=MAX_MESSAGE_BYTES, open_timeout=self._read_timeout) as ws:
                async for message in ws:
                    for line in (message if isinstance(message, str) else message.decode()).split("\n"):
                        for item in _parse_ws_line(orjson.loads(line)):
                            yield item
                code, reason = ws.close_code, ws.close_reason or ""
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status in RETRYABLE_STATUS:
                raise _Retry(f"handshake answered {status}", status) from exc
            if self._transport == "auto" and status in _NO_UPGRADE:
                raise _NoWebSocket(f"handshake answered {status}") from exc
            raise GatewayError(status, "handshake_refused", f"WebSocket upgrade answered {status}") from exc
        except ConnectionClosed as exc:
            code, reason = (exc.rcvd.code, exc.rcvd.reason) if exc.rcvd else (1006, "")
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            raise _Retry(f"cannot connect: {exc!r}") from exc
        if code == 1000:
            return
        if code in RETRY_CLOSE_CODES or code is None:
            raise _Retry(f"closed with {code}", code or 1006)
        status = code - 4000 if 4000 <= code < 5000 else 400
        raise GatewayError(status, f"closed_{code}", reason or f"WebSocket closed with {code}")

    async def _sse(self) -> AsyncGenerator[StreamItem, None]:
        headers = {"accept": "text/event-stream", **self._headers}
        timeout = httpx.Timeout(self._read_timeout)
        try:
            async with self._http.stream("GET", self._url, params=self._params(), headers=headers,
                                         timeout=timeout) as resp:
                if resp.status_code in RETRYABLE_STATUS:
                    raise _Retry(f"answered {resp.status_code}", resp.status_code)
                if resp.status_code >= 400:
                    raise await error_from_response(resp)
                fields: dict[str, str] = {}
                async for line in sse_lines(resp.aiter_bytes()):
                    if line:
                        name, _, value = line.partition(":")
                        fields[name] = value.removeprefix(" ")
                        continue
                    item = self._sse_item(fields)
                    fields = {}
                    if item is not None:
                        yield item
        except httpx.TransportError as exc:
            raise _Retry(f"connection lost: {exc!r}") from exc
        if self._follow:
            raise _Retry("server ended the stream")

    def _sse_item(self, fields: dict[str, str]) -> StreamItem | None:
        """One SSE message (PROTOCOL §5): data with its cursor as id, or a control as a comment."""
        if "data" in fields and "id" in fields:
            cursor = fields["id"]
            stored = fields["data"].encode()
            return Event(split_cursor(cursor)[1], cursor, orjson.loads(stored), stored)
        comment = fields.get("", "")
        word, _, rest = comment.partition(" ")
        args = dict(part.split("=", 1) for part in rest.split() if "=" in part)
        if word == "live":
            return Live(self.cursor)
        if word == "reset":
            return Reset(args["epoch"])
        if word == "skipped":
            seq = int(args["seq"])
            return Skipped(seq, f"{self.epoch}-{seq}", args.get("reason", ""), int(args.get("bytes", 0)))
        return None


async def sse_lines(chunks: AsyncIterator[bytes]) -> AsyncIterator[str]:
    """The lines of an SSE body, ended by `\n` (a CR before it dropped) and nothing else.

    httpx's `aiter_lines` also ends lines at U+2028 and other Unicode breaks, which a stored
    event may hold inside a string: that would cut its `data:` line in two.
    """
    pending: list[bytes] = []  # the start of an unfinished line, kept in pieces (no quadratic joins)
    async for chunk in chunks:
        if b"\n" not in chunk:
            pending.append(chunk)
            continue
        first, *lines, last = chunk.split(b"\n")
        for line in (b"".join([*pending, first]), *lines):
            yield line.removesuffix(b"\r").decode()
        pending = [last] if last else []
    if pending:
        yield b"".join(pending).removesuffix(b"\r").decode()


def _parse_ws_line(obj: dict[str, Any]) -> list[StreamItem | _Hello]:
    """One line of a WebSocket frame (PROTOCOL §4): an event batch or a control."""
    if "events" in obj:
        first = obj["first"]
        epoch = split_cursor(obj["cursor"])[0]
        seqs = obj.get("seqs") or range(first, first + len(obj["events"]))  # compact batches list theirs
        return [Event(seq, f"{epoch}-{seq}", ev) for seq, ev in zip(seqs, obj["events"], strict=True)]
    control = obj.get("control")
    if control == "hello":
        return [_Hello(obj["epoch"], obj.get("head"), bool(obj.get("reset")))]
    if control == "live":
        return [Live(obj.get("cursor"))]
    if control == "reset":
        return [Reset(obj["epoch"])]
    if control == "skipped":
        return [Skipped(obj["seq"], obj["cursor"], obj.get("reason", ""), obj.get("bytes", 0))]
    return []

