"""Event bodies for tests: the one `evs()` every test module appends."""

from __future__ import annotations

from typing import Any


def evs(start: int, count: int, **extra: Any) -> list[dict[str, Any]]:
    """`count` AG-UI events numbered from `start` in field `n`, each with the `extra` fields."""
    return [{"type": "TEXT_MESSAGE_CONTENT", "n": n, **extra} for n in range(start, start + count)]
