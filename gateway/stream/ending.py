"""How the tasks of one stream end together without leaving garbage for the collector.

Cancelling a task group's scope ends its child tasks with a `CancelledError`. A task that ends
so keeps that exception, and anyio's completion callback holds it in a local of its own frame,
which the exception's traceback holds in turn: a cycle through every frame the task ran (the
stream's reader, encoder, socket wrappers...), freed only when the garbage collector runs. Here
each task of a stream runs in a cancel scope of its own, `stop` cancels those scopes, each scope
absorbs its own cancellation, and every task ends by returning.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import anyio
import anyio.abc


class Together:
    """The tasks (and the host's own waits) of one stream; `stop()` ends them all by returning."""

    __slots__ = ("_scopes", "stopped")

    def __init__(self) -> None:
        self._scopes: set[anyio.CancelScope] = set()
        self.stopped = False

    @contextlib.contextmanager
    def scope(self) -> Iterator[None]:
        """A block that `stop()` ends (at once, if it was already called)."""
        with anyio.CancelScope() as scope:
            if self.stopped:
                scope.cancel()
            self._scopes.add(scope)
            try:
                yield
            finally:
                self._scopes.discard(scope)

    def start(self, tg: anyio.abc.TaskGroup, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        tg.start_soon(self.run, fn, *args)

    async def run(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Run `fn` until it returns or `stop()` is called."""
        with self.scope():
            await fn(*args)

    def stop(self) -> None:
        self.stopped = True
        for scope in list(self._scopes):
            scope.cancel()
