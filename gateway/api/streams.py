"""What the three stream transports share: request parsing and opening a reader."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from starlette.requests import HTTPConnection

from gateway.api.access import READ, SessionAccess, session_access
from gateway.api.errors import bad_request
from gateway.api.sessions import ascii_int
from gateway.sessions.registry import Connection
from gateway.store.base import ProjectMismatch, SessionNotFound
from gateway.store.cursor import Cursor, parse_cursor
from gateway.stream.compact_reader import CompactReader
from gateway.stream.reader import LogReader


@dataclass(frozen=True, slots=True)
class StreamRequest:
    after: Cursor | None
    tail: int | None
    follow: bool
    view: str = "raw"


def parse_stream_request(
    query: Mapping[str, str], *, default_follow: bool, last_event_id: str | None = None, default_view: str = "raw"
) -> StreamRequest:
    after_text = last_event_id or query.get("after") or None
    after = parse_cursor(after_text) if after_text else None
    tail = None
    if query.get("tail") is not None:
        try:
            tail = ascii_int(query["tail"])
        except ValueError:
            raise bad_request(f"tail must be a non-negative integer, got {query['tail'][:32]!r}") from None
    follow = parse_flag(query, "follow", default_follow)
    view = query.get("view") or default_view
    if view not in ("raw", "compact"):
        raise bad_request(f"view must be raw or compact, got {view[:32]!r}")
    return StreamRequest(after, tail, follow, view)


def parse_flag(query: Mapping[str, str], name: str, default: bool) -> bool:
    text = query.get(name)
    if text is None:
        return default
    if text in ("1", "true"):
        return True
    if text in ("0", "false"):
        return False
    raise bad_request(f"{name} must be 1 or 0, got {text[:32]!r}")


@dataclass(frozen=True, slots=True)
class OpenStream:
    access: SessionAccess
    request: StreamRequest
    reader: LogReader | CompactReader
    reset: bool
    """True if the request's `after` could not be honoured (another epoch, or past the end)."""
    conn: Connection
    subscribe: bool
    """False for a WebSocket that only appends (`subscribe=0`): its reader was not positioned."""


async def open_stream(
    http: HTTPConnection, transport: str, *, default_follow: bool, last_event_id: str | None = None
) -> OpenStream:
    """Authorize, register the connection, open the session's log and position a reader.

    The connection is registered before the log is opened, so the sweeper never evicts a
    session that a stream is about to read. A WebSocket's `subscribe=0` (a writer's) skips the
    positioning: it reads nothing, so it neither seeks nor asks for the session's compact cache.
    """
    access = await session_access(http, READ, starts_work=True)
    req = parse_stream_request(http.query_params, default_follow=default_follow, last_event_id=last_event_id,
                               default_view=access.gw.settings.default_view)
    subscribe = transport != "websocket" or parse_flag(http.query_params, "subscribe", True)
    registry = access.gw.registry
    conn = registry.connect(access.project, access.session, transport)
    try:
        log = await access.log()
        caches = access.gw.caches
        if subscribe and req.view == "compact":
            reader: LogReader | CompactReader = CompactReader(log, caches.sidecar(log))
        else:
            reader = LogReader(log)
            if subscribe:
                caches.opened(log)
        reset = subscribe and await reader.seek(req.after, req.tail)
    except (SessionNotFound, ProjectMismatch):
        registry.disconnect(conn, forget=True)  # no such session: leave no entry (nor metric series) behind
        raise
    except BaseException:
        registry.disconnect(conn)
        raise
    return OpenStream(access, req, reader, reset, conn, subscribe)
