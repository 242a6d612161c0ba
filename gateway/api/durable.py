"""The Durable Streams interface: `/ds/<project>/v1/stream/<path>`, every method of the protocol.

`<path>` `sessions/<session>` is that AG-UI session (an `application/json` stream of its events);
any other path is a stream of the project created with PUT, on the same store. Access is the
gateway's: the project's token or Kubernetes grant, verbs `get` (GET, HEAD), `update` (PUT,
POST) and `delete`, the same Host and Origin guards and body limits as every route.
"""

from __future__ import annotations

import random

import anyio
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from gateway.api.access import DELETE, READ, WRITE, SessionAccess, authorize, credential
from gateway.api.bodies import parse_events
from gateway.api.durable_sse import DsSse
from gateway.api.errors import HANDLED, ApiError, api_error, shutting_down
from gateway.api.events import read_body
from gateway.clock import now_ms
from gateway.ds.protocol import (
    DsError,
    etag,
    is_true,
    media_type,
    parse_count,
    parse_expires_at,
    parse_offset,
    parse_producer,
    parse_ttl,
    response_cursor,
)
from gateway.ds.streams import DurableStreams, Stream, meta_key, stream_key
from gateway.ds.writes import Append, Create, Encoder, Outcome, append, create, encoder, offset_text, position_of
from gateway.names import check_name
from gateway.runtime import Gateway, gateway_of
from gateway.store.base import SessionNotFound

PATH = "/ds/{project}/v1/stream/{path:path}"
SESSIONS = "sessions/"
READ_BYTES = 1024 * 1024
"""Log bytes one catch-up read or SSE event carries at most (a longer history takes several)."""
MAX_PATH = 1024
SECURITY = {"X-Content-Type-Options": "nosniff", "Cross-Origin-Resource-Policy": "cross-origin"}
ALLOW_HEADERS = ("authorization, content-type, if-none-match, stream-seq, stream-ttl, stream-expires-at, "
                 "stream-closed, producer-id, producer-epoch, producer-seq, stream-forked-from, stream-fork-offset, "
                 "stream-fork-sub-offset")
EXPOSE_HEADERS = ("Stream-Next-Offset, Stream-Cursor, Stream-Up-To-Date, Stream-Closed, Stream-TTL, Stream-Expires-At, "
                  "Producer-Epoch, Producer-Seq, Producer-Expected-Seq, Producer-Received-Seq, ETag, Location, "
                  "Stream-SSE-Data-Encoding")
VERBS = {"GET": READ, "HEAD": READ, "PUT": WRITE, "POST": WRITE, "DELETE": DELETE}


def check_path(path: str) -> str:
    """A stream path: UTF-8 text, segments that are neither empty nor dot names, no control characters."""
    segments = path.split("/")
    if not path or len(path) > MAX_PATH or any(s in ("", ".", "..") for s in segments) or \
            any(ord(c) < 0x20 or c == "\x7f" for c in path):
        raise DsError(400, f"invalid stream path {path[:80]!r}")
    if segments[0] == "__ds":
        raise DsError(404, "the reserved __ds APIs (subscriptions) are not served by this gateway")
    return path


class Endpoint:
    """The ASGI app of the prefix: one handler per method, DsError answered with its headers."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        gw = gateway_of(request)
        try:
            response = await self.handle(request, gw)
        except DsError as exc:
            response = ApiError(exc.status, "durable_streams", exc.message).response()
            response.headers.update(exc.headers)
        except HANDLED as exc:  # the gateway's own refusals (auth, names, store): its error table
            response = api_error(exc).response()
        if response.status_code >= 400:
            gw.metrics.rejected.labels(str(response.status_code)).inc()
        gw.metrics.ds_requests.labels(request.method, str(response.status_code)).inc()
        if isinstance(response, DsSse):  # its headers go out when it starts
            await response(scope, receive, send)
            return
        response.headers.update(SECURITY)
        origin = request.headers.get("origin")
        if origin and (origin in gw.settings.allowed_origins or "*" in gw.settings.allowed_origins):
            response.headers.update({"Access-Control-Allow-Origin": origin, "Vary": "Origin",
                                     "Access-Control-Expose-Headers": EXPOSE_HEADERS})
        await response(scope, receive, send)

    async def handle(self, request: Request, gw: Gateway) -> Response | DsSse:
        method = request.method
        if method == "OPTIONS":  # a preflight: the browser then applies the Origin rules above
            return Response(status_code=204, headers={
                "Access-Control-Allow-Methods": "GET, HEAD, POST, PUT, DELETE, OPTIONS",
                "Access-Control-Allow-Headers": ALLOW_HEADERS, "Access-Control-Max-Age": "600"})
        verb = VERBS.get(method)
        if verb is None:
            raise ApiError(405, "method_not_allowed", f"{method} is not a Durable Streams method")
        project = check_name("project", request.path_params["project"])
        path = check_path(request.path_params["path"])
        live = request.query_params.get("live")
        if (verb == WRITE or live) and gw.draining.is_set():
            raise shutting_down()
        decision = await authorize(gw, request.headers, request.query_params, project, verb)
        ds = gw.durable
        if path.startswith(SESSIONS):
            session = check_name("session", path[len(SESSIONS):])
            access = SessionAccess(gw, project, session, decision.user, credential(request.headers,
                                                                                   request.query_params))
            gw.registry.touch(project, session)
            return await self.session(request, gw, ds, access)
        key = stream_key(project, path)
        for name in (key, meta_key(key)):  # the sweeper lets go of the logs of streams nobody uses
            gw.registry.touch(project, name)
        if method == "PUT":
            return await self.put(request, gw, ds, project, path)
        key_stream = await ds.open(project, path)
        if key_stream is None:
            raise DsError(404, f"no stream {path!r} in project {project!r}")
        if key_stream.meta.deleted:
            raise DsError(410, f"stream {path!r} is deleted")
        if method == "DELETE":
            async with ds.lock(key_stream.key):
                stream = await ds.open(project, path, expire=False)
                if stream is None:
                    raise DsError(404, f"no stream {path!r} in project {project!r}")
                expired = ds.expired(stream) and not stream.meta.deleted
                await ds.remove(project, stream)
            if expired:
                raise DsError(404, f"no stream {path!r} in project {project!r} (it expired)")
            return Response(status_code=204)
        if method == "POST":
            return await self.post(request, gw, ds, project, key_stream,
                                   encoder(key_stream.kind, gw.settings.max_event_bytes))
        return await self.read(request, gw, ds, project, key_stream)

    async def session(self, request: Request, gw: Gateway, ds: DurableStreams,
                      access: SessionAccess) -> Response | DsSse:
        """A session as a stream: created by an append or PUT, reset (a new epoch) by DELETE."""
        method = request.method
        if method == "PUT":
            closed, fork = is_true(request.headers.get("stream-closed")), request.headers.get("stream-forked-from")
            wrong = media_type(request.headers.get("content-type", "application/json")) != "application/json"
            if closed or fork or wrong or "stream-ttl" in request.headers or "stream-expires-at" in request.headers:
                raise DsError(409, "an AG-UI session is an open application/json stream with no expiry")
            body = await read_body(request, gw.settings.max_body_bytes)
            try:
                log, status = await access.log(), 200
            except SessionNotFound:  # no such session yet: this PUT makes it
                log, status = await access.log(create=True), 201
            stream = await ds.session(access.project, log, writer_state=False)
            if body:
                await log.append(parse_events(body, "application/json", gw.settings.max_event_bytes))
            return Response(status_code=status, headers={"Content-Type": stream.content_type,
                                                         "Stream-Next-Offset": offset_text(stream)})
        log = await access.log(claim=method == "DELETE")
        stream = await ds.session(access.project, log, writer_state=method in ("POST", "DELETE"))
        if method == "DELETE":
            await log.delete()
            if stream.meta_log is not None:
                await stream.meta_log.delete()
            return Response(status_code=204)
        if method == "POST":
            max_event = gw.settings.max_event_bytes
            return await self.post(request, gw, ds, access.project, stream,
                                   lambda body: parse_events(body, "application/json", max_event))
        return await self.read(request, gw, ds, access.project, stream)

    async def put(self, request: Request, gw: Gateway, ds: DurableStreams, project: str, path: str) -> Response:
        h = request.headers
        ttl = parse_ttl(h["stream-ttl"]) if "stream-ttl" in h else None
        expires = (h["stream-expires-at"], parse_expires_at(h["stream-expires-at"])) \
            if "stream-expires-at" in h else None
        if ttl is not None and expires is not None:
            raise DsError(400, "Stream-TTL and Stream-Expires-At exclude each other")
        fork_from, sub_text = h.get("stream-forked-from"), h.get("stream-fork-sub-offset")
        sub = parse_count("Stream-Fork-Sub-Offset", sub_text) if sub_text is not None else 0
        if sub_text is not None and fork_from is None:
            raise DsError(400, "Stream-Fork-Sub-Offset needs Stream-Forked-From")
        if sub and "stream-fork-offset" not in h:
            raise DsError(400, "Stream-Fork-Sub-Offset needs Stream-Fork-Offset")
        if fork_from is not None:
            fork_from = fork_source(request, fork_from)
        body = await read_body(request, gw.settings.max_body_bytes)
        req = Create(body, h.get("content-type"), ttl, expires, is_true(h.get("stream-closed")), fork_from,
                     h.get("stream-fork-offset"), sub)
        async with ds.lock(stream_key(project, path)):
            outcome, _ = await create(ds, project, path, req)
        headers = dict(outcome.headers)
        if outcome.status == 201:
            headers["Location"] = str(request.url.replace(query=""))
        return Response(status_code=outcome.status, headers=headers)

    async def post(self, request: Request, gw: Gateway, ds: DurableStreams, project: str, stream: Stream,
                   encode: Encoder) -> Response:
        h = request.headers
        producer = parse_producer(h.get("producer-id"), h.get("producer-epoch"), h.get("producer-seq"))
        body = await read_body(request, gw.settings.max_body_bytes)
        req = Append(body, h.get("content-type"), producer, h.get("stream-seq"), is_true(h.get("stream-closed")))
        async with ds.lock(stream.key):
            await ds.refresh(stream)
            outcome = await append(ds, project, stream, req, encode)
        return answer(outcome)

    async def read(self, request: Request, gw: Gateway, ds: DurableStreams, project: str,
                   stream: Stream) -> Response | DsSse:
        if request.method == "HEAD":
            return Response(status_code=200, headers=head_headers(stream))
        offsets = request.query_params.getlist("offset")
        if len(offsets) > 1 or offsets == [""]:
            raise DsError(400, "give one non-empty offset")
        live = request.query_params.get("live")
        if live not in (None, "long-poll", "sse"):
            raise DsError(400, f"live must be long-poll or sse, got {live[:32]!r}")
        if live and not offsets:
            raise DsError(400, f"live={live} needs an offset")
        offset = parse_offset(offsets[0]) if offsets else "-1"
        position = position_of(stream, offset)
        ds.touch(stream)
        cursor = request.query_params.get("cursor")
        if live == "sse":
            return DsSse(gw, ds, stream, position, cursor)
        if offset == "now" and live is None:
            headers = {"Content-Type": stream.content_type, "Stream-Next-Offset": offset_text(stream),
                       "Stream-Up-To-Date": "true", "Cache-Control": "no-store"}
            if stream.meta.closed:
                headers["Stream-Closed"] = "true"
            return Response(stream.body([]) if stream.kind != "bytes" else b"", 200, headers)
        versions = ds.versions(stream)
        reader = ds.reader(stream, position)
        parts = await reader.read(READ_BYTES)
        if live == "long-poll" and not parts:
            if not stream.meta.closed:
                with anyio.CancelScope() as scope:  # a draining gateway answers its long-polls at once
                    gw.draining.watch(scope.cancel)
                    try:
                        await ds.wait(stream, versions, gw.settings.heartbeat_interval)
                    finally:
                        gw.draining.unwatch(scope.cancel)
                await ds.refresh(stream)
                parts = await reader.read(READ_BYTES)
            if not parts:
                headers = {"Stream-Next-Offset": offset_text(stream, position), "Stream-Up-To-Date": "true"}
                if stream.meta.closed:
                    headers["Stream-Closed"] = "true"
                else:
                    headers["Stream-Cursor"] = response_cursor(cursor, now_ms(), random.randint(1, 180))
                return Response(status_code=204, headers=headers)
        end = reader.position
        at_tail = end >= stream.tail
        closed = stream.meta.closed and at_tail
        start = offsets[0] if offsets else "-1"
        tag = etag(stream.key, start, offset_text(stream, end), closed)
        headers = {"Content-Type": stream.content_type, "Stream-Next-Offset": offset_text(stream, end), "ETag": tag,
                   "Cache-Control": "private, max-age=60, stale-while-revalidate=300" if parts else "no-store"}
        if at_tail:
            headers["Stream-Up-To-Date"] = "true"
        if closed:
            headers["Stream-Closed"] = "true"
        if live == "long-poll" and not closed:
            headers["Stream-Cursor"] = response_cursor(cursor, now_ms(), random.randint(1, 180))
        if request.headers.get("if-none-match") == tag:
            return Response(status_code=304, headers={"ETag": tag})
        body = stream.body(parts)
        gw.metrics.bytes_sent.labels("ds").inc(len(body))
        return Response(body, 200, headers)


def fork_source(request: Request, value: str) -> str:
    """The source of a fork as a path of this project's streams: the header is its URL path."""
    prefix = request.url.path[: len(request.url.path) - len(request.path_params["path"])]
    base = prefix[prefix.index("/v1/stream/"):] if "/v1/stream/" in prefix else prefix
    for head in (prefix, base):
        if value.startswith(head):
            return check_path(value[len(head):])
    raise DsError(404, f"Stream-Forked-From {value[:80]!r} is not a stream of this project")


def head_headers(stream: Stream) -> dict[str, str]:
    headers = {"Content-Type": stream.content_type, "Stream-Next-Offset": offset_text(stream),
               "Cache-Control": "no-store"}
    if stream.meta.ttl is not None:
        headers["Stream-TTL"] = str(stream.meta.ttl)
    if stream.meta.expires_at is not None:
        headers["Stream-Expires-At"] = stream.meta.expires_at
    if stream.meta.closed:
        headers["Stream-Closed"] = "true"
    return headers


def answer(outcome: Outcome) -> Response:
    return Response(status_code=outcome.status, headers=outcome.headers)
