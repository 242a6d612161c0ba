"""A watchdog for the test's own event loop: how long did the loop go without a turn?

A task on the loop stamps the time every few milliseconds; a thread reads the stamp. A loop that
spins without awaiting (the bug class this guards against) never stamps again: past `abort_after`
the thread raises `LoopBlocked` inside the loop's thread, which breaks the spin so the test fails
with a traceback instead of hanging the suite.
"""

from __future__ import annotations

import contextlib
import ctypes
import threading
import time
from collections.abc import AsyncIterator

import anyio


class LoopBlocked(Exception):
    """Raised into the event loop's thread when it has not had a turn for too long."""


class LoopWatch:
    def __init__(self, abort_after: float) -> None:
        self.abort_after = abort_after
        self.max_lag = 0.0
        self._stamp = time.monotonic()
        self._stop = threading.Event()
        self._loop_thread = threading.get_ident()

    async def tick(self) -> None:
        while True:
            self._stamp = time.monotonic()
            await anyio.sleep(0.005)

    def watch(self) -> None:
        while not self._stop.wait(0.02):
            lag = time.monotonic() - self._stamp
            self.max_lag = max(self.max_lag, lag)
            if lag > self.abort_after:
                ctypes.pythonapi.PyThreadState_SetAsyncExc(
                    ctypes.c_ulong(self._loop_thread), ctypes.py_object(LoopBlocked)
                )
                return


@contextlib.asynccontextmanager
async def loop_watch(abort_after: float = 20.0) -> AsyncIterator[LoopWatch]:
    """Measure the longest time the current event loop went without a turn (`max_lag`)."""
    watch = LoopWatch(abort_after)
    thread = threading.Thread(target=watch.watch, name="loop-watch", daemon=True)
    thread.start()
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(watch.tick)
            yield watch
            tg.cancel_scope.cancel()
    finally:
        watch._stop.set()
        thread.join()
