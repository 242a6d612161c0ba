"""What an event stream yields, and the errors the client raises."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson


def split_cursor(cursor: str) -> tuple[str, int]:
    """`<epoch>-<seq>` into its parts; the client only splits cursors the server made."""
    epoch, _, seq = cursor.rpartition("-")
    return epoch, int(seq)


@dataclass(frozen=True, slots=True)
class Event:
    """One stored AG-UI event with its position in the session's log."""

    seq: int
    cursor: str
    data: dict[str, Any]
    stored: bytes | None = field(default=None, repr=False, compare=False)

    @property
    def type(self) -> str:
        return str(self.data.get("type", ""))

    @property
    def raw(self) -> bytes:
        """The event as one JSON line: the stored bytes over SSE, re-encoded over WebSocket."""
        return self.stored if self.stored is not None else orjson.dumps(self.data)


@dataclass(frozen=True, slots=True)
class Reset:
    """The log was deleted or replaced (new `epoch`): what came before is void, seq starts at 1 again.

    A consumer that renders the session should clear its view when it gets this.
    """

    epoch: str


@dataclass(frozen=True, slots=True)
class Skipped:
    """A stored line that cannot be delivered (corrupt or oversize); its seq is used up."""

    seq: int
    cursor: str
    reason: str
    bytes: int


@dataclass(frozen=True, slots=True)
class Live:
    """The stream caught up with the end of the log; what follows is live. Sent after every (re)connect."""

    cursor: str | None


StreamItem = Event | Reset | Skipped | Live


class GatewayError(Exception):
    """The gateway refused the request (HTTP status, or WebSocket close 4000 + status): don't retry."""

    def __init__(self, status: int, code: str, message: str, detail: dict[str, Any] | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.detail = detail or {}
        """The whole JSON error: a streaming append's also says what it stored (`stored`, `first`, `last`)."""


class GatewayUnreachable(Exception):
    """The gateway could not be reached (or kept dropping the stream) after the allowed retries."""


RETRYABLE_STATUS = frozenset({502, 503, 504})
"""HTTP answers that mean "not now" (draining, restarting, behind a proxy): worth a retry."""


async def error_from_response(resp: httpx.Response) -> GatewayError:
    """The gateway's JSON error (PROTOCOL §3) of a failed response, read from a streamed body too."""
    await resp.aread()
    try:
        err = resp.json()["error"]
        return GatewayError(resp.status_code, str(err["code"]), str(err["message"]), err)
    except (ValueError, KeyError, TypeError):
        return GatewayError(resp.status_code, "http_error", resp.text[:200] or resp.reason_phrase)
