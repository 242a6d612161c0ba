"""Agent status (`working`, `idle`, `waiting_input`) from the end of a session's log.

Only the last run is read: backwards from the end, in bounded chunks, until its RUN_STARTED
(or SCAN_LIMIT bytes), so the cost does not grow with the log. The rules, newest event first:

- RUN_ERROR before any RUN_STARTED: the last run failed, `idle`.
- RUN_FINISHED with an `interrupt` outcome, or a success outcome naming `pendingToolCallIds`:
  `waiting_input`.
- RUN_STARTED with no RUN_FINISHED/RUN_ERROR after it: `working`.
- A finished run with a TOOL_CALL_START that has no TOOL_CALL_RESULT in the run: the agent
  called a tool the client must answer, `waiting_input`.
- Anything else (no run, or a run that finished cleanly): `idle`.

A result is cached per session for the log's exact length and epoch, so it is never stale and
a status poll on an unchanged log costs nothing.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Any, Literal

import orjson

from gateway.store.base import SessionLog, StoreError

AgentStatus = Literal["working", "idle", "waiting_input"]
CHUNK = 64 * 1024
SCAN_LIMIT = 8 * 1024 * 1024
"""Past this many bytes without a RUN_STARTED, the answer comes from what was read."""
CACHE_SIZE = 4096


class StatusCache:
    """Status per session, keyed by (epoch, lines): reused until the log changes."""

    def __init__(self, size: int = CACHE_SIZE) -> None:
        self._size = size
        self._entries: OrderedDict[tuple[str, str], tuple[str, int, AgentStatus]] = OrderedDict()

    async def get(self, flog: SessionLog) -> AgentStatus:
        key = (flog.project or "", flog.session)  # "": an unclaimed legacy folder
        epoch, lines = flog.epoch, flog.lines
        hit = self._entries.get(key)
        if hit is not None and hit[:2] == (epoch, lines):
            self._entries.move_to_end(key)
            return hit[2]
        try:
            status = await agent_status(flog, lines)
        except (StoreError, ValueError):
            return "idle"  # the log was reset under the read: nothing of a run is left to judge
        self._entries[key] = (epoch, lines, status)
        self._entries.move_to_end(key)
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)
        return status


async def lines_backwards(flog: SessionLog, lines: int) -> AsyncIterator[bytes]:
    """Yield the first `lines` lines of the log, last first, reading CHUNK bytes at a time."""
    end = await flog.offset_of(lines + 1)
    pos, carry, scanned = end, b"", 0
    while pos > 0 and scanned < SCAN_LIMIT:
        start = max(0, pos - CHUNK)
        data = b""
        while len(data) < pos - start:
            more = await flog.read(start + len(data), pos - start - len(data))
            if not more:
                return
            data += more
        scanned += len(data)
        pos = start
        parts = (data + carry).split(b"\n")
        carry = parts[0] if pos > 0 else b""
        for line in reversed(parts[1:] if pos > 0 else parts):
            if line:
                yield line


class StatusRules:
    """The rules above as a pure fold: fed the log's events newest first, `see` answers once they decide."""

    def __init__(self) -> None:
        self._answered: set[str] = set()
        self._finished = False

    def see(self, event: Any) -> AgentStatus | None:
        if not isinstance(event, dict):
            return None
        kind = event.get("type")
        if kind == "RUN_STARTED":
            return "idle" if self._finished else "working"
        if self._finished:
            if kind == "TOOL_CALL_RESULT":
                self._answered.add(str(event.get("toolCallId")))
            elif kind == "TOOL_CALL_START" and str(event.get("toolCallId")) not in self._answered:
                return "waiting_input"
        elif kind == "RUN_ERROR":
            return "idle"
        elif kind == "RUN_FINISHED":
            outcome = event.get("outcome")
            if isinstance(outcome, dict) and (outcome.get("type") == "interrupt" or outcome.get("pendingToolCallIds")):
                return "waiting_input"
            self._finished = True
        return None


async def agent_status(flog: SessionLog, lines: int) -> AgentStatus:
    rules = StatusRules()
    async for line in lines_backwards(flog, lines):
        try:
            event = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if (status := rules.see(event)) is not None:
            return status
    return "idle"
