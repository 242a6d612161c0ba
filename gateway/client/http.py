"""`GatewayClient`: one project on one gateway, over httpx (requests) and websockets (streams)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit, urlunsplit

import httpx
import orjson

from gateway.client.items import error_from_response
from gateway.client.stream import Backoff, EventStream, Transport

T = TypeVar("T")


def split_session_url(url: str) -> tuple[str, str, str]:
    """`http://host/[prefix/]v1/projects/P/sessions/S[/events]` into (base URL, project, session)."""
    parts = urlsplit(url)
    prefix, marker, rest = parts.path.partition("/v1/projects/")
    names = rest.strip("/").split("/")
    if not marker or len(names) < 3 or names[1] != "sessions" or names[3:] not in ([], ["events"]):
        raise ValueError(f"not a session URL (expected .../v1/projects/P/sessions/S): {url}")
    return urlunsplit((parts.scheme, parts.netloc, prefix, "", "")), names[0], names[2]


class GatewayClient:
    """Talk to the sessions of one project; use as `async with GatewayClient(...) as client:`.

    `token` is sent as `Authorization: Bearer` on every request and stream. Errors the gateway
    answers raise `GatewayError`; transport failures of single requests raise `httpx.TransportError`
    (streams retry those themselves).
    """

    def __init__(self, base_url: str = "http://127.0.0.1:8080", project: str = "default", *,
                 token: str | None = None, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.project = project
        self._headers = {"authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.AsyncClient(timeout=timeout, headers=self._headers)

    async def __aenter__(self) -> GatewayClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    def session_url(self, session: str) -> str:
        return f"{self.base_url}/v1/projects/{self.project}/sessions/{session}"

    def events(self, session: str, *, after: str | None = None, tail: int | None = None, follow: bool = True,
               transport: Transport = "auto", backoff: Backoff | None = None,
               max_retries: int | None = None, view: str | None = None) -> EventStream:
        """Replay the session from the start (or strictly `after` a cursor, or its last `tail` events).

        With `follow` the stream then stays live until closed; without, it ends at the end of the
        log. Drops are resumed with backoff; `max_retries` consecutive failures (default: no
        limit) raise `GatewayUnreachable`. `view="compact"` asks for finished runs with their deltas
        merged (seqs then skip); None leaves it to the gateway's default.
        """
        return EventStream(self._http, self.session_url(session) + "/events", after=after, tail=tail,
                           follow=follow, transport=transport, headers=self._headers, backoff=backoff,
                           max_retries=max_retries, view=view)

    async def append(self, session: str, events: Sequence[Mapping[str, Any]] | bytes, *,
                     content_type: str = "application/x-ndjson") -> dict[str, Any]:
        """Append events (all or nothing); returns `{"first", "last", "count"}` cursors.

        `events` is a list of event objects, or a body already encoded as `content_type`.
        """
        if isinstance(events, bytes):
            body, media = events, content_type
        else:
            body, media = orjson.dumps(list(events)), "application/json"
        resp = await self._http.post(self.session_url(session) + "/events", content=body,
                                     headers={"content-type": media})
        return await _json(resp)

    async def append_stream(self, session: str,
                            events: AsyncIterable[Mapping[str, Any] | bytes] | Iterable[Mapping[str, Any] | bytes],
                            *, keepalive: float = 5.0) -> dict[str, Any]:
        """Append events as they come, in one long request (`POST .../events?stream=1`).

        Each item is an event object (sent as one NDJSON line) or bytes of NDJSON sent as they are
        (any number of lines, even pieces of lines). The gateway stores each complete line as it
        arrives, so followers see it before the request ends. While an async source has nothing
        to send for `keepalive` seconds, a blank line (which the gateway skips) keeps the request
        from being cut as a stalled upload (`GATEWAY_HEADER_TIMEOUT`, 10 s by default). Returns
        `{"first", "last", "count"}`; a failure part way raises `GatewayError` whose `detail` says
        how many events were stored (`stored`) and the cursor of the last one (`last`).
        """
        async def body() -> AsyncIterator[bytes]:
            if isinstance(events, AsyncIterable):
                async for item in _with_keepalive(events, keepalive, b"\n"):
                    yield _ndjson(item)
            else:
                for item in events:
                    yield _ndjson(item)

        resp = await self._http.post(self.session_url(session) + "/events", params={"stream": "1"}, content=body(),
                                     headers={"content-type": "application/x-ndjson"},
                                     timeout=httpx.Timeout(self._http.timeout.connect, read=None, write=None,
                                                           pool=None))
        return await _json(resp)

    async def delete(self, session: str) -> dict[str, Any]:
        """Drop the session's log; open streams get `Reset`, the next append starts a new epoch."""
        return await _json(await self._http.delete(self.session_url(session) + "/events"))

    async def status(self, session: str) -> dict[str, Any]:
        """`{project, session, epoch, head, events, bytes, connections, lastSeen, agentStatus}`."""
        return await _json(await self._http.get(self.session_url(session)))

    async def export(self, session: str, fmt: Literal["jsonl", "json"] = "jsonl") -> AsyncIterator[bytes]:
        """The whole log as a download, chunk by chunk (never held in memory at once)."""
        async with self._http.stream("GET", self.session_url(session) + "/export",
                                     params={"format": fmt}, timeout=httpx.Timeout(None)) as resp:
            await _check(resp)
            async for chunk in resp.aiter_bytes():
                yield chunk

    async def sessions(self, *, search: str | None = None,
                       page_size: int = 100) -> AsyncIterator[dict[str, Any]]:
        """Every session of the project, page after page (following `continue`)."""
        params: dict[str, str | int] = {"limit": page_size}
        if search:
            params["search"] = search
        while True:
            page = await _json(await self._http.get(f"{self.base_url}/v1/projects/{self.project}/sessions",
                                                    params=params))
            for item in page["items"]:
                yield item
            if not page.get("continue"):
                return
            params["continue"] = page["continue"]


async def _with_keepalive(source: AsyncIterable[T], every: float, filler: T) -> AsyncIterator[T]:
    """The items of `source`, and `filler` whenever it has had nothing for `every` seconds."""
    items = aiter(source)
    pending: asyncio.Future[T] = asyncio.ensure_future(anext(items))
    try:
        while True:
            done, _ = await asyncio.wait({pending}, timeout=every)
            if not done:
                yield filler
                continue
            try:
                item = pending.result()
            except StopAsyncIteration:
                return
            yield item
            pending = asyncio.ensure_future(anext(items))
    finally:
        pending.cancel()


def _ndjson(item: Mapping[str, Any] | bytes) -> bytes:
    return item if isinstance(item, bytes) else orjson.dumps(item) + b"\n"


async def _check(resp: httpx.Response) -> None:
    if resp.status_code >= 400:
        raise await error_from_response(resp)


async def _json(resp: httpx.Response) -> dict[str, Any]:
    await _check(resp)
    body: dict[str, Any] = resp.json()
    return body

