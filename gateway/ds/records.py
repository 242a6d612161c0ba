"""Request bodies into log lines, and log lines into response bodies (pure).

A stream's log holds one JSON object per line like every log of the store, so the store's rules
(classification, the event size limit, NATS messages) hold unchanged:

- a message of a JSON stream is the line `{"m":<message>}`;
- an append to a byte stream is one or more lines `{"b":"<base64>"}` of at most `RECORD_BYTES`;
- an AG-UI session's lines are its events, as they are (each is one message).

Reading splices: a batch of JSON lines becomes the messages joined by commas with one
`bytes.replace`, since `}\\n{"m":` can only occur between lines.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

import orjson

from gateway.ds.protocol import DsError

RECORD_BYTES = 1024 * 1024
"""Bytes of a byte stream's append per log line (its base64 is 4/3 of it, under the event limit)."""
_M_OPEN, _M_CLOSE = b'{"m":', b"}"
_B_OPEN, _B_CLOSE = b'{"b":"', b'"}'


def _loads(body: bytes) -> Any:
    """The standard library's decoder: integers beyond 64 bits stay exact (orjson makes them floats)."""
    try:
        return json.loads(body.decode("utf-8"), parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        raise DsError(400, f"body is not valid JSON: {exc}") from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _dumps(value: Any) -> bytes:
    try:
        return orjson.dumps(value)
    except (TypeError, orjson.JSONEncodeError):  # an integer beyond 64 bits, a lone surrogate (escaped)
        return json.dumps(value, separators=(",", ":")).encode()


def json_messages(body: bytes, *, allow_empty: bool) -> list[bytes]:
    """The messages of a JSON body, each as its stored JSON text: an array is flattened one level;
    `[]` stores nothing (refused for appends, `allow_empty` for creation)."""
    value = _loads(body)
    items = value if isinstance(value, list) else [value]
    if not items and not allow_empty:
        raise DsError(400, "an empty JSON array appends nothing")
    return [_dumps(item) for item in items]


def wrap_messages(messages: list[bytes], max_line: int) -> list[bytes]:
    lines = [_M_OPEN + m + _M_CLOSE for m in messages]
    for i, line in enumerate(lines):
        if len(line) > max_line:
            raise DsError(413, f"message {i} is {len(line)} bytes, over the {max_line}-byte limit")
    return lines


def byte_records(body: bytes, record_bytes: int = RECORD_BYTES) -> list[bytes]:
    return [_B_OPEN + base64.b64encode(body[i : i + record_bytes]) + _B_CLOSE
            for i in range(0, len(body), record_bytes)]


def unwrap_messages(data: bytes) -> bytes:
    """Whole `{"m":...}` lines joined by newlines, as their messages joined by commas."""
    joined = data.replace(_M_CLOSE + b"\n" + _M_OPEN, b",")
    return joined[len(_M_OPEN) : -len(_M_CLOSE)]


def event_messages(data: bytes) -> bytes:
    """A session's event lines as JSON messages joined by commas."""
    return data.replace(b"\n", b",")


def record_bytes(data: bytes) -> bytes:
    """Whole `{"b":"..."}` lines joined by newlines, as the bytes they hold."""
    try:
        return b"".join(base64.b64decode(line[len(_B_OPEN) : -len(_B_CLOSE)]) for line in data.split(b"\n"))
    except binascii.Error as exc:
        raise ValueError(f"a byte record is damaged: {exc}") from None


def json_array(parts: list[bytes]) -> bytes:
    return b"[" + b",".join(p for p in parts if p) + b"]"


def sse_data(payload: bytes, *, encoded: bool) -> bytes:
    """An `event: data` block: text split into `data:` lines (a CR or LF never ends one early),
    binary as base64."""
    text = base64.b64encode(payload) if encoded else payload
    lines = text.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
    return b"event: data\n" + b"".join(b"data:" + line + b"\n" for line in lines) + b"\n"


def sse_control(fields: dict[str, Any]) -> bytes:
    return b"event: control\ndata:" + orjson.dumps(fields) + b"\n\n"
