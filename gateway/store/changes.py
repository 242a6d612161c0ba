"""What a log's readers wait on: a version bumped on every visible change (any store)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class Changes:
    """`version` moves on every `notify`; `wait` returns once it differs from what a reader saw.

    `waiters` counts readers waiting now, and listeners: a log with waiters is in use and is not
    evicted. A listener is called inside `notify`, so it sees the change in the same loop turn
    (a session's hub publishes from there); it must not block. `batched`: each change already
    gathers what arrived meanwhile (a commit cycle's), so a listener may act on it at once; else
    changes come one per append, and a listener gathers a loop turn's worth itself.

    An asyncio event, not anyio's: one is made for every append, and anyio's costs a backend
    lookup to make and a checkpoint more to wait on (the gateway runs on asyncio only).
    """

    def __init__(self, *, batched: bool = False) -> None:
        self.batched = batched
        self.version = 0
        self.waiters = 0
        self._event = asyncio.Event()
        self._listeners: list[Callable[[], None]] = []

    def notify(self) -> None:
        self.version += 1
        self._event.set()
        self._event = asyncio.Event()
        for listener in list(self._listeners) if self._listeners else ():
            listener()

    def listen(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)
        self.waiters += 1

    def unlisten(self, listener: Callable[[], None]) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)
            self.waiters -= 1

    async def wait(self, version: int) -> None:
        while self.version == version:
            self.waiters += 1
            try:
                await self._event.wait()
            finally:
                self.waiters -= 1
