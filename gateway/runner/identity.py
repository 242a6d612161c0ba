"""Sender identity, as the platform's backend records it (pure functions, no I/O).

User messages of a run get `metadata.senderId` and `metadata.senderDisplayName`, so a session
shared by several people shows who wrote what. A message with `metadata.hidden: true` (an
auto-sent prompt) is announced by a `RAW` `message_metadata` event stored before it, so viewers
hide it before it arrives. The runner is told who calls through `X-Current-User-*` headers and gets
the caller's own `Authorization` as `X-Caller-Token`, for credentials scoped to that user.
"""

from __future__ import annotations

from typing import Any

import orjson
from ag_ui.core import Message

from gateway.runner.hooks import Caller


def with_sender(messages: list[Message], caller: Caller) -> list[Message]:
    """Copies of `messages` whose user messages carry the caller as sender (others unchanged)."""
    if not caller.user:
        return messages
    out = []
    for message in messages:
        if message.role == "user":
            metadata: dict[str, Any] = dict(message.metadata) if isinstance(message.metadata, dict) else {}
            metadata["senderId"] = caller.user
            metadata["senderDisplayName"] = caller.user
            message = message.model_copy(update={"metadata": metadata})
        out.append(message)
    return out


def hidden_events(run_id: str, thread_id: str, messages: list[Message]) -> list[bytes]:
    """One `RAW` `message_metadata` event per message marked `metadata.hidden: true`."""
    return [
        orjson.dumps({"type": "RAW", "threadId": thread_id, "runId": run_id,
                      "event": {"type": "message_metadata", "messageId": m.id, "hidden": True}})
        for m in messages
        if isinstance(m.metadata, dict) and m.metadata.get("hidden") is True
    ]


def identity_headers(caller: Caller) -> dict[str, str]:
    """What the backend sends a runner about the caller; nothing for an anonymous caller."""
    if not caller.user:
        return {}
    headers = {"X-Current-User-ID": caller.user, "X-Current-User-Name": caller.user}
    if caller.authorization:
        headers["X-Caller-Token"] = caller.authorization
    return headers
