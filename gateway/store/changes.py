"""What a log's readers wait on: a version bumped on every visible change (any store)."""

from __future__ import annotations

import asyncio


class Changes:
    """`version` moves on every `notify`; `wait` returns once it differs from what a reader saw.

    `waiters` counts readers waiting now: a log with waiters is in use and is not evicted.

    An asyncio event, not anyio's: one is made for every append, and anyio's costs a backend
    lookup to make and a checkpoint more to wait on (the gateway runs on asyncio only).
    """

    def __init__(self) -> None:
        self.version = 0
        self.waiters = 0
        self._event = asyncio.Event()

    def notify(self) -> None:
        self.version += 1
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self, version: int) -> None:
        while self.version == version:
            self.waiters += 1
            try:
                await self._event.wait()
            finally:
                self.waiters -= 1
