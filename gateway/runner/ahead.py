"""Reading a runner's stream ahead of the appends it feeds.

A run's events are appended as they arrive, and with `GATEWAY_FSYNC=always` an append returns
only once a commit cycle made it durable. Reading the next event only after that would make a run
as fast as one event per commit cycle: with hundreds of runs streaming at once, that is slower
than the runners send, and the backlog grows in the socket. `ReadAhead` keeps reading in a task
of its own while the consumer appends, and hands over everything that arrived meanwhile as one
batch, so a run costs one append (one write, one sync wait) per commit cycle, whatever its pace.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio

READ_AHEAD_BYTES = 1024 * 1024
"""Bytes read and not yet taken past which the reader stops, so a stalled disk holds the runner
back through TCP instead of filling memory."""


class ReadAhead:
    """Batches of an async iterator, read ahead: `fill` (a task) reads, `take` gets all read so far.

    An exception of the source is raised by `take`, in the consumer's task, after the batches
    read before it: the reader task itself never fails, so no exception group wraps it.
    """

    __slots__ = ("_arrived", "_batch", "_bytes", "_done", "_error", "_room", "limit")

    def __init__(self, limit: int = READ_AHEAD_BYTES) -> None:
        self.limit = limit
        self._batch: list[bytes] = []
        self._bytes = 0
        self._done = False
        self._error: Exception | None = None
        self._arrived = anyio.Event()
        self._room = anyio.Event()

    async def fill(self, source: AsyncIterator[list[bytes]]) -> None:
        try:
            async for batch in source:
                self._batch += batch
                self._bytes += sum(map(len, batch))
                self._arrived.set()
                while self._bytes > self.limit:
                    self._room = anyio.Event()
                    await self._room.wait()
        except Exception as exc:
            self._error = exc
        finally:
            self._done = True
            self._arrived.set()

    async def take(self) -> list[bytes] | None:
        """Everything read since the last call, waiting for something; None at the end."""
        while not self._batch:
            if self._done:
                if self._error is not None:
                    raise self._error
                return None
            await self._arrived.wait()
            self._arrived = anyio.Event()
        batch, self._batch, self._bytes = self._batch, [], 0
        self._room.set()
        return batch
