"""The compact view of a log (pure): deltas merged, order and cursors kept.

A log is mostly token deltas. The compact form of a stretch of it sends, per message, its
`TEXT_MESSAGE_START`, one `TEXT_MESSAGE_CONTENT` with the whole text and its `TEXT_MESSAGE_END`;
per tool call `START`, one `ARGS`, `END`; a run of state events whose result is known becomes one
`STATE_SNAPSHOT`. Everything else passes through byte for byte, in order. These are the rules of
`@ag-ui/client`'s `compactEvents`, with two differences that make cursors exact:

- Nothing is reordered. Every compact event carries the seq of the last raw event it covers, and
  the events sent up to any such seq cover exactly the raw events up to it. So a client resuming
  after any compact cursor misses nothing and gets nothing twice. Deltas therefore merge while they
  are consecutive: deltas of two messages that alternate merge per uninterrupted stretch.
- A state group becomes a snapshot only where the state it starts from is known (after a
  `STATE_SNAPSHOT` seen by the same compactor) and every patch applies; otherwise the events stay
  as they are. `compactEvents` folds deltas into a snapshot even when a patch fails.

The compactor streams: it holds one open merge, at most `MERGE_BYTES` of escaped text (a longer
message becomes several content events), plus the tracked state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from gateway.stream.framing import Skipped

MERGE_BYTES = 256 * 1024
"""Most escaped text one merged content event holds: what bounds a compactor's memory."""


@dataclass(frozen=True, slots=True)
class Event:
    """One event of the compact view: `seq` is that of the last raw event it covers."""

    seq: int
    data: bytes


CompactItem = Event | Skipped

_DELTAS = {b"TEXT_MESSAGE_CONTENT": b"messageId", b"TOOL_CALL_ARGS": b"toolCallId"}
_DELTA_SPEC = {  # kind -> (type, id key, keys a mergeable delta may have)
    kind: (kind.decode(), id_key.decode(), frozenset({"type", id_key.decode(), "delta", "timestamp", "metadata"}))
    for kind, id_key in _DELTAS.items()
}
_STATES = frozenset({b"STATE_SNAPSHOT", b"STATE_DELTA"})
_MERGED = frozenset(_DELTAS) | _STATES
_SNAPSHOT_KEYS = frozenset({"type", "snapshot", "timestamp", "metadata"})
_PATCH_KEYS = frozenset({"type", "delta", "timestamp", "metadata"})
_UNKNOWN: Any = object()
"""Tracked state when it is not known (nothing in this compactor's input fixed it)."""


class PatchError(ValueError):
    """A JSON Patch this module does not apply with certainty; the caller keeps the raw event."""


# Keys a JavaScript object has through its prototype: fast-json-patch may resolve them where a
# dict has nothing, so a patch that touches one is left to the client.
_JS_KEYS = frozenset({
    "__proto__", "constructor", "prototype", "toString", "valueOf", "hasOwnProperty", "isPrototypeOf",
    "propertyIsEnumerable", "toLocaleString", "__defineGetter__", "__defineSetter__", "__lookupGetter__",
    "__lookupSetter__",
})


def _index(key: str, size: int, *, insert: bool) -> int:
    if key == "-" and insert:
        return size
    if not key.isascii() or not key.isdigit() or (len(key) > 1 and key[0] == "0"):
        raise PatchError(f"bad array index {key!r}")
    i = int(key)
    if i > size or (i == size and not insert):
        raise PatchError(f"array index {i} out of bounds")
    return i


def _apply_op(doc: Any, op: Any) -> None:
    """One `add`, `remove` or `replace` (RFC 6902) in place, validated before anything changes."""
    if not isinstance(op, dict) or not isinstance(op.get("path"), str):
        raise PatchError("operation without a path")
    kind, path = op.get("op"), op["path"]
    if kind not in ("add", "remove", "replace") or not path.startswith("/"):
        raise PatchError(f"operation {kind!r} on {path[:64]!r} is not applied here")
    if kind != "remove" and "value" not in op:
        raise PatchError(f"{kind} without a value")
    keys = [k.replace("~1", "/").replace("~0", "~") for k in path[1:].split("/")]
    if any(k in _JS_KEYS for k in keys):
        raise PatchError("path touches a JavaScript prototype key")
    parent = doc
    for key in keys[:-1]:
        if isinstance(parent, dict) and key in parent:
            parent = parent[key]
        elif isinstance(parent, list):
            parent = parent[_index(key, len(parent), insert=False)]
        else:
            raise PatchError(f"path {path[:64]!r} does not resolve")
    last = keys[-1]
    if isinstance(parent, dict):
        if kind != "add" and last not in parent:
            raise PatchError(f"path {path[:64]!r} does not resolve")
        if kind == "remove":
            del parent[last]
        else:
            parent[last] = op["value"]
    elif isinstance(parent, list):
        i = _index(last, len(parent), insert=kind == "add")
        if kind == "add":
            parent.insert(i, op["value"])
        elif kind == "remove":
            del parent[i]
        else:
            parent[i] = op["value"]
    else:
        raise PatchError(f"path {path[:64]!r} goes through a scalar")


def apply_patch(doc: Any, patch: Any) -> Any:
    """`doc` with `patch` applied, or PatchError; `doc` itself is changed only on success.

    A strict subset of fast-json-patch's `applyPatch(doc, patch, validate=true)`: whatever it
    accepts here, that library applies the same way; anything else is refused.
    """
    if not isinstance(patch, list):
        raise PatchError("a patch is a list of operations")
    if len(patch) > 1:
        doc = orjson.loads(orjson.dumps(doc))  # a later operation may fail: work on a copy
    for op in patch:
        _apply_op(doc, op)
    return doc


def _parse(line: bytes) -> dict[str, Any] | None:
    try:
        value = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None  # valid JSON orjson refuses (lone surrogates): passed through untouched
    return value if isinstance(value, dict) else None


def _metadata_ok(event: dict[str, Any]) -> bool:
    return "metadata" not in event or isinstance(event["metadata"], dict)


class _Merge:
    """Consecutive deltas of one message or tool call, as escaped JSON string bodies."""

    __slots__ = ("first", "key", "kind", "last", "metadata", "parts", "size")

    def __init__(self, kind: bytes, key: str, seq: int, first: bytes) -> None:
        self.kind, self.key = kind, key
        self.first: bytes | None = first  # the raw line while it is the only one: sent unchanged
        self.last = seq
        self.parts: list[bytes] = []
        self.size = 0
        self.metadata: dict[str, Any] | None = None

    def add(self, seq: int, delta: str, metadata: dict[str, Any] | None) -> None:
        body = orjson.dumps(delta)[1:-1]
        self.parts.append(body)
        self.size += len(body)
        self.last = seq
        if metadata is not None:
            self.metadata = {**(self.metadata or {}), **metadata}

    def encode(self) -> bytes:
        if len(self.parts) == 1 and self.first is not None:
            return self.first
        meta = b',"metadata":' + orjson.dumps(self.metadata) if self.metadata is not None else b""
        return b'{"type":"%s","%s":%s,"delta":"%s"%s}' % (
            self.kind, _DELTAS[self.kind], orjson.dumps(self.key), b"".join(self.parts), meta,
        )


class _StateGroup:
    """Consecutive state events starting from a known state."""

    __slots__ = ("count", "first", "last", "metadata")

    def __init__(self, seq: int, first: bytes, metadata: dict[str, Any] | None) -> None:
        self.first, self.last, self.count = first, seq, 1
        self.metadata = metadata


class Compactor:
    """Feed raw lines of a stretch of log in seq order; collect compact items from `out`.

    `finish` flushes what is open, at the end of the stretch (a finished run, or where a
    compact stream hands over to raw events).
    """

    def __init__(self) -> None:
        self.out: list[CompactItem] = []
        self._merge: _Merge | None = None
        self._group: _StateGroup | None = None
        self._state: Any = _UNKNOWN

    def feed(self, seq: int, line: bytes) -> None:
        kind = _kind(line)
        if not kind and b'"STATE_' in line:
            # The textual look missed it (another "type" key came first): the tracked state must
            # still see every state event, so ask the parser.
            event = _parse(line)
            if event is None:
                self._flush()
                self._state = _UNKNOWN  # may be a state event this module cannot read
            else:
                kind = str(event.get("type")).encode()
        if (kind in _DELTAS and self._delta(seq, line, kind)) or (
                kind in _STATES and self._state_event(seq, line, kind)):
            return
        self._flush()
        self.out.append(Event(seq, line))

    def skip(self, item: Skipped) -> None:
        self._flush()
        self.out.append(item)

    def finish(self) -> None:
        self._flush()

    def _delta(self, seq: int, line: bytes, kind: bytes) -> bool:
        event = _parse(line)
        name, id_key, keys = _DELTA_SPEC[kind]
        if event is None or event.get("type") != name or not event.keys() <= keys:
            return False
        key, delta, metadata = event.get(id_key), event.get("delta"), event.get("metadata")
        if type(key) is not str or type(delta) is not str or not _metadata_ok(event):
            return False
        merge = self._merge
        if merge is not None and (merge.kind != kind or merge.key != key or merge.size + len(delta) > MERGE_BYTES):
            self._flush()
            merge = None
        if merge is None:
            self._flush()
            merge = self._merge = _Merge(kind, key, seq, line)
        merge.add(seq, delta, metadata)
        return True

    def _state_event(self, seq: int, line: bytes, kind: bytes) -> bool:
        event = _parse(line)
        if event is None or event.get("type") != kind.decode():
            self._flush()
            self._state = _UNKNOWN  # the client applies it; what it makes of it is not known here
            return False
        if kind == b"STATE_SNAPSHOT":
            if "snapshot" not in event:
                self._flush()
                self._state = _UNKNOWN
                return False
            mergeable = event.keys() <= _SNAPSHOT_KEYS and _metadata_ok(event)
            if not mergeable:
                self._flush()
            self._state = event["snapshot"]
        else:
            mergeable = event.keys() <= _PATCH_KEYS and _metadata_ok(event)
            if self._state is _UNKNOWN:
                self._flush()
                return False
            try:
                state = apply_patch(self._state, event.get("delta"))
            except PatchError:
                self._flush()  # the group's snapshot is the state before this event
                self._state = _UNKNOWN
                return False
            if not mergeable:
                self._flush()
            self._state = state
        if not mergeable:
            return False
        metadata = event.get("metadata")
        group = self._group
        if group is None:
            self._flush()
            self._group = _StateGroup(seq, line, metadata)
        else:
            group.count += 1
            group.last = seq
            if metadata is not None:
                group.metadata = {**(group.metadata or {}), **metadata}
        return True

    def _flush(self) -> None:
        if self._merge is not None:
            self.out.append(Event(self._merge.last, self._merge.encode()))
            self._merge = None
        group = self._group
        if group is not None:
            self._group = None
            if group.count == 1:
                self.out.append(Event(group.last, group.first))
            else:
                meta = b',"metadata":' + orjson.dumps(group.metadata) if group.metadata is not None else b""
                data = b'{"type":"STATE_SNAPSHOT","snapshot":%s%s}' % (orjson.dumps(self._state), meta)
                self.out.append(Event(group.last, data))


_TYPE_KEY = b'"type"'


def _kind(line: bytes) -> bytes:
    """The event's type when it is one of those the compactor merges, else b"" (no parse needed).

    Looks for `"type":"X"` textually; a line that spells it otherwise (spaces, escapes) is
    simply not merged, which is always correct.
    """
    if line.startswith(b'{"type":"'):  # how nearly every writer puts it: no search needed
        kind = line[9 : line.find(b'"', 9)]
        return kind if kind in _MERGED else b""
    i = line.find(_TYPE_KEY)
    while i != -1:
        j = i + len(_TYPE_KEY)
        while line[j : j + 1] in (b" ", b"\t"):
            j += 1
        if line[j : j + 1] == b":":
            j += 1
            while line[j : j + 1] in (b" ", b"\t"):
                j += 1
            if line[j : j + 1] == b'"':
                end = line.find(b'"', j + 1)
                kind = line[j + 1 : end]
                return kind if kind in _MERGED else b""
        i = line.find(_TYPE_KEY, i + 1)
    return b""




def is_run_end(line: bytes) -> bool:
    """True for a `RUN_FINISHED` or `RUN_ERROR` event: where a finished run's compact form ends."""
    if b"RUN_FINISHED" not in line and b"RUN_ERROR" not in line:
        return False
    event = _parse(line)
    return event is not None and event.get("type") in ("RUN_FINISHED", "RUN_ERROR")
