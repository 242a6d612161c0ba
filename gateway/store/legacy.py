"""Conversion of pre-AG-UI `messages.jsonl` logs (pure; `FileLog` does the atomic file part)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

MIGRATION_RUN_ID = "legacy-migration"


@dataclass
class LegacyConversion:
    messages: list[dict[str, Any]] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)  # by type; "<corrupt>" for unreadable lines


def convert_legacy(lines: Iterable[bytes]) -> LegacyConversion:
    """Map legacy `{"type", "payload"}` lines to AG-UI messages (PROTOCOL §1)."""
    out = LegacyConversion()
    for n, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            item = orjson.loads(raw)
        except orjson.JSONDecodeError:
            item = None
        if not isinstance(item, dict) or not isinstance(item.get("payload"), dict):
            out.skipped["<corrupt>"] = out.skipped.get("<corrupt>", 0) + 1
            continue
        kind, payload = item.get("type"), item["payload"]
        msg_id = str(payload.get("id") or payload.get("messageId") or f"legacy-{n}")
        content = payload.get("content")
        if kind == "user_message":
            out.messages.append({"id": msg_id, "role": "user", "content": content})
        elif kind == "agent.message" and isinstance(content, dict) and content.get("type") == "text_block":
            out.messages.append({"id": msg_id, "role": "assistant", "content": content.get("text")})
        else:
            key = str(kind)
            out.skipped[key] = out.skipped.get(key, 0) + 1
    return out


def snapshot_event(thread_id: str, messages: list[dict[str, Any]], timestamp_ms: int) -> bytes:
    return orjson.dumps(
        {
            "type": "MESSAGES_SNAPSHOT",
            "threadId": thread_id,
            "runId": MIGRATION_RUN_ID,
            "timestamp": timestamp_ms,
            "messages": messages,
        }
    )


def is_migration_snapshot(line: bytes) -> bool:
    try:
        event = orjson.loads(line)
    except orjson.JSONDecodeError:
        return False
    return (
        isinstance(event, dict)
        and event.get("type") == "MESSAGES_SNAPSHOT"
        and event.get("runId") == MIGRATION_RUN_ID
    )
