"""How the tasks of one stream end together without leaving garbage for the collector.

Cancelling a task group's scope ends its child tasks with a `CancelledError`. A task that ends
so keeps that exception, and anyio's completion callback holds it in a local of its own frame,
which the exception's traceback holds in turn: a cycle through every frame the task ran (the
stream's reader, encoder, socket wrappers...), freed only when the garbage collector runs. Here
each task of a stream runs in a cancel scope of its own, `stop` cancels those scopes, each scope
absorbs its own cancellation, and every task ends by returning.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any

import anyio
import anyio.abc


class Together:
    """The tasks (and the host's own waits) of one stream; `stop()` ends them all by returning."""

    __slots__ = ("_scopes", "stopped")

    def __init__(self) -> None:
        self._scopes: list[anyio.CancelScope] = []  # a few at most: an empty set costs 216 bytes
        self.stopped = False

    def scope(self) -> Block:
        """A block that `stop()` ends (at once, if it was already called)."""
        return Block(self)

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


class Block:
    """`Together.scope()`: a cancel scope registered with its `Together` while it runs. A class,
    not a generator context manager: an idle stream holds two of these for its whole life, and a
    suspended generator with its wrapper costs several times more."""

    __slots__ = ("_together", "cancel_scope")

    def __init__(self, together: Together) -> None:
        self._together = together
        self.cancel_scope = anyio.CancelScope()

    def __enter__(self) -> None:
        scope = self.cancel_scope.__enter__()
        if self._together.stopped:
            scope.cancel()
        self._together._scopes.append(scope)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> bool:
        self._together._scopes.remove(self.cancel_scope)
        return bool(self.cancel_scope.__exit__(exc_type, exc, tb))
