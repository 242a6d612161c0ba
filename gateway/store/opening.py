"""Opening a session's log once, however many requests ask for it at the same time (any store)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import anyio

L = TypeVar("L")


class OpenOnce(Generic[L]):
    """The logs a store has open, by session; concurrent first opens of one session load it once."""

    def __init__(self) -> None:
        self.logs: dict[str, L] = {}
        self._opening: dict[str, anyio.Lock] = {}

    async def get(self, session: str, load: Callable[[], Awaitable[L]]) -> L:
        cached = self.logs.get(session)
        if cached is None:
            lock = self._opening.setdefault(session, anyio.Lock())
            async with lock:
                cached = self.logs.get(session)
                if cached is None:
                    cached = await load()
                    self.logs[session] = cached
            self._opening.pop(session, None)
        return cached
