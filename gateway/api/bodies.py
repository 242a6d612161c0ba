"""Append bodies into the lines to store: every item an object with a string `type` (pure, no I/O).

Every item is stored exactly as sent (objects of an array too: their text is cut out of the
body, never re-encoded), so numbers beyond 64 bits, escapes and every other detail survive.
Only line breaks are removed, which JSON allows solely as whitespace between tokens.

An escaped lone surrogate (`"\\ud800"`) is valid JSON text but no valid Unicode: orjson, browsers'
TextDecoder-based parsers and the project's own client refuse it, so one such event would break
every reader of the session. It is refused here, with the line or item that holds it.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import orjson

from gateway.api.errors import ApiError, bad_request
from gateway.store.lines import no_constants, one_line

JSON_TYPES = ("application/json", "text/json")
NDJSON_TYPES = ("application/x-ndjson", "application/jsonl", "application/json-seq")
_WS = " \t\r\n"
_WS_BYTES = _WS.encode()
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def media_of(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def unsupported_media(media: str) -> ApiError:
    return ApiError(415, "unsupported_media_type",
                    f"content type {media!r} not accepted: use application/json or application/x-ndjson")


def _finite(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"number {text[:32]} is out of range (Infinity is not JSON)")
    return value


_DECODER = json.JSONDecoder(parse_constant=no_constants, parse_float=_finite)


def _decode(raw: bytes, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise bad_request(f"{what} is not valid JSON: not UTF-8 ({exc})", "bad_json") from None


def _parse(raw: bytes, what: str) -> Any:
    text = _decode(raw, what)
    try:
        value, end = _DECODER.raw_decode(text, len(text) - len(text.lstrip(_WS)))
        if text[end:].strip(_WS):
            raise json.JSONDecodeError("Extra data", text, end)
        return value
    except (ValueError, RecursionError) as exc:
        raise bad_request(f"{what} is not valid JSON: {exc}", "bad_json") from None


def _lone_surrogate(value: Any) -> str | None:
    """The first string (key or value) in `value` that holds a lone surrogate, if any."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return item
    return None


def _check_unicode(value: Any, raw: bytes, what: str) -> None:
    if _SURROGATE_ESCAPE.search(raw) and (text := _lone_surrogate(value)) is not None:
        raise bad_request(f"{what} holds a lone surrogate in the string {ascii(text)[:80]}: not valid Unicode, "
                          "and most JSON readers (the gateway's clients included) refuse it", "bad_json")


def parse_event(raw: bytes, what: str) -> Any:
    """The JSON value of one line; orjson first (fast, and it refuses lone surrogates itself)."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        value = _parse(raw, what)  # what orjson refuses but JSON allows decides below
        _check_unicode(value, raw, what)
        return value


def check_event(i: int, event: Any, line: bytes, max_event_bytes: int, where: str = "") -> bytes:
    if not isinstance(event, dict) or not isinstance(event.get("type"), str):
        at = f" ({where})" if where else ""
        raise bad_request(f"event {i}{at} is not a JSON object with a string 'type'", "bad_event")
    if len(line) > max_event_bytes:
        raise too_large(i, len(line), max_event_bytes, where)
    return line


def too_large(i: int, size: int, max_event_bytes: int, where: str = "") -> ApiError:
    at = f" ({where})" if where else ""
    return ApiError(413, "event_too_large",
                    f"event {i}{at} is {size} bytes, over GATEWAY_MAX_EVENT_BYTES={max_event_bytes}")


def parse_json_body(body: bytes, max_event_bytes: int) -> list[bytes]:
    """A JSON body: one object, or an array of objects (each stored with its exact text)."""
    text = _decode(body, "body").strip(_WS)
    lines: list[bytes] = []
    if text[:1] == "[":
        if (one := _single_item(text)) is not None:
            return [check_event(0, one, one_line(text[1:-1].strip(_WS).encode()), max_event_bytes)]
        for i, (item, raw_item) in enumerate(_array_items(text)):
            raw = raw_item.encode()
            _check_unicode(item, raw, f"event {i}")
            lines.append(check_event(i, item, one_line(raw), max_event_bytes))
    else:
        raw = text.encode()
        lines.append(check_event(0, parse_event(raw, "body"), one_line(raw), max_event_bytes))
    if not lines:
        raise no_events()
    return lines


def parse_events(body: bytes, content_type: str, max_event_bytes: int) -> list[bytes]:
    """A whole append body (one object, a JSON array, or NDJSON) into the lines to store."""
    media = media_of(content_type)
    if media in NDJSON_TYPES:
        lines, error = NdjsonLines(max_event_bytes).validate(body + b"\n")
        if error is not None:
            raise error
        if not lines:
            raise no_events()
        return lines
    if media in JSON_TYPES or media.endswith("+json"):
        return parse_json_body(body, max_event_bytes)
    raise unsupported_media(media)


def no_events() -> ApiError:
    return bad_request("no events in the body", "no_events")


def _skip_ws(text: str, i: int) -> int:
    n = len(text)
    while i < n and text[i] in _WS:
        i += 1
    return i


def _single_item(text: str) -> Any:
    """The item of an array of one (the usual append of a streaming writer), parsed by orjson;
    None for any other array, or for one that needs the careful path (orjson refuses lone
    surrogates, integers beyond 64 bits, NaN), which then decides."""
    try:
        items = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    return items[0] if isinstance(items, list) and len(items) == 1 else None


def _array_items(text: str) -> list[tuple[Any, str]]:
    """The items of the JSON array `text` (which starts with '['), each with its exact text."""
    items: list[tuple[Any, str]] = []
    i = _skip_ws(text, 1)
    try:
        if text[i : i + 1] == "]":
            i += 1
        else:
            while True:
                value, end = _DECODER.raw_decode(text, i)
                items.append((value, text[i:end]))
                i = _skip_ws(text, end)
                sep = text[i : i + 1]
                i = _skip_ws(text, i + 1)
                if sep == "]":
                    break
                if sep != ",":
                    raise json.JSONDecodeError("Expecting ',' delimiter", text, i)
        if _skip_ws(text, i) != len(text):
            raise json.JSONDecodeError("Extra data", text, i)
    except (ValueError, RecursionError) as exc:
        raise bad_request(f"body is not valid JSON: {exc}", "bad_json") from None
    return items


class NdjsonLines:
    """An NDJSON body cut into validated lines as its chunks arrive, line numbers kept.

    Lines end at `\\n` only (U+2028 and a lone CR are characters of a line, not ends). `feed`
    keeps at most one unfinished line, so memory per body is one chunk plus one event.
    """

    def __init__(self, max_event_bytes: int) -> None:
        self.max_event_bytes = max_event_bytes
        self.line_no = 0  # physical lines of the body taken by `validate` so far
        self.events = 0  # events among them
        self._partial = bytearray()

    def feed(self, chunk: bytes) -> bytes:
        """The complete lines that `chunk` finishes (b"" if none); the rest waits for its end."""
        cut = chunk.rfind(b"\n")
        if cut < 0:
            self._partial += chunk
            if len(self._partial) > self.max_event_bytes and len(one_line(bytes(self._partial).strip(_WS_BYTES))) \
                    > self.max_event_bytes:
                line = f"line {self.line_no + 1}"
                raise too_large(self.events, len(self._partial), self.max_event_bytes, line)
            return b""
        done = bytes(self._partial) + chunk[: cut + 1] if self._partial else chunk[: cut + 1]
        self._partial = bytearray(chunk[cut + 1 :])
        return done

    def finish(self) -> bytes:
        """The last line, when the body ends without a newline."""
        rest, self._partial = bytes(self._partial), bytearray()
        return rest

    def validate(self, data: bytes) -> tuple[list[bytes], ApiError | None]:
        """The events of `data` (whole lines) up to the first bad one, and that one's error."""
        lines: list[bytes] = []
        parts = data.split(b"\n")
        if parts and parts[-1] == b"":
            parts.pop()
        for raw in parts:
            self.line_no += 1
            raw = raw.strip(_WS_BYTES)
            if not raw:
                continue
            where = f"line {self.line_no}"
            try:
                line = one_line(raw)
                if len(line) > self.max_event_bytes:
                    raise too_large(self.events, len(line), self.max_event_bytes, where)
                lines.append(check_event(self.events, parse_event(raw, where), line, self.max_event_bytes, where))
            except ApiError as exc:
                return lines, exc
            self.events += 1
        return lines, None
