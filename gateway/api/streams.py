"""What the three stream transports share: request parsing and opening a reader."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from gateway.api.access import READ, authorize
from gateway.api.errors import ApiError, bad_request
from gateway.names import NameError_, check_name
from gateway.runtime import Gateway
from gateway.sessions.catalog import CatalogError
from gateway.sessions.registry import Connection, TooManyConnections
from gateway.store.base import SessionNotFound, StoreError
from gateway.store.cursor import Cursor, CursorError, parse_cursor
from gateway.store.files import FileLog
from gateway.stream.reader import LogReader


@dataclass(frozen=True)
class StreamRequest:
    project: str
    session: str
    after: Cursor | None
    tail: int | None
    follow: bool


def parse_names(path_params: Mapping[str, str]) -> tuple[str, str]:
    try:
        return check_name("project", path_params["project"]), check_name("session", path_params["session"])
    except NameError_ as exc:
        raise bad_request(str(exc), "bad_name") from exc


def parse_stream_request(
    path_params: Mapping[str, str], query: Mapping[str, str], *, default_follow: bool, last_event_id: str | None = None
) -> StreamRequest:
    project, session = parse_names(path_params)
    after_text = last_event_id or query.get("after") or None
    try:
        after = parse_cursor(after_text) if after_text else None
    except CursorError as exc:
        raise bad_request(str(exc), "bad_cursor") from exc
    tail = None
    if query.get("tail") is not None:
        try:
            tail = int(query["tail"])
            if tail < 0:
                raise ValueError
        except ValueError:
            raise bad_request(f"tail must be a non-negative integer, got {query['tail'][:32]!r}") from None
    follow_text = query.get("follow")
    if follow_text is None:
        follow = default_follow
    elif follow_text in ("1", "true"):
        follow = True
    elif follow_text in ("0", "false"):
        follow = False
    else:
        raise bad_request(f"follow must be 1 or 0, got {follow_text[:32]!r}")
    return StreamRequest(project, session, after, tail, follow)


async def open_log(gw: Gateway, project: str, session: str, *, create: bool = False) -> FileLog:
    """The session's log, up to date with what other processes appended since it was last looked at.

    A session the Kubernetes registry knows gets a log folder on first use; with the files
    registry, only `create` (an append) makes a new session.
    """
    try:
        try:
            flog = await gw.store.open(project, session, create=create and gw.settings.registry == "files")
        except SessionNotFound:
            if gw.settings.registry != "kubernetes" or await gw.catalog.get(project, session) is None:
                raise
            flog = await gw.store.open(project, session, create=True)
        await flog.poll()
        return flog
    except StoreError as exc:
        raise ApiError.from_store(exc) from exc
    except CatalogError as exc:
        raise ApiError(503, exc.code, exc.message) from exc


async def open_stream(
    gw: Gateway, req: StreamRequest, transport: str, headers: Mapping[str, str], query: Mapping[str, str]
) -> tuple[LogReader, bool, Connection]:
    """Authorize, register the connection, open the session's log and position a reader.

    The connection is registered before the log is opened, so the sweeper never evicts a
    session that a stream is about to read.
    """
    if gw.draining.is_set():
        raise ApiError(503, "shutting_down", "the gateway is shutting down; reconnect with your last cursor")
    await authorize(gw, headers, query, req.project, READ)
    conn = connect(gw, req.project, req.session, transport)
    try:
        reader = LogReader(await open_log(gw, req.project, req.session))
        reset = await reader.seek(req.after, req.tail)
    except StoreError as exc:
        gw.registry.disconnect(conn)
        raise ApiError.from_store(exc) from exc
    except BaseException:
        gw.registry.disconnect(conn)
        raise
    return reader, reset, conn


def connect(gw: Gateway, project: str, session: str, transport: str) -> Connection:
    try:
        return gw.registry.connect(project, session, transport)
    except TooManyConnections as exc:
        raise ApiError(503, "too_many_connections", str(exc)) from exc
