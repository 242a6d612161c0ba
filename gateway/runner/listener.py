"""Events between runs: one listener per session on the runner's `GET <base>events/<session>` (SSE).

A runner also speaks outside the runs it is asked for (background tasks, scheduled work). Once a
run has started on a session, a listener keeps a connection to that stream and persists every
event it carries, so followers see them live and they stay in the log.

Reconnecting: a connection that delivered events is followed at once by the next one and resets
the backoff; any other ending (refused, an error answer, closed without events) waits
`Backoff.delay(failures)`: 1 s, growing x1.5 per consecutive failure, capped at 30 s, or until the
next run starts on the session. The listener
never gives up on a session that is still there: it ends when the session is gone or stopped
(asked after each failure), when the runner has no such route (404/405), or at shutdown. The
platform's backend counts attempts without resetting them and stops listening after 30
connections, however healthy; this listener does not.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import anyio
import anyio.abc
import httpx

from gateway.runner.client import RunnerClient, RunnerError, event_line, sse_events
from gateway.store.base import StoreError

log = logging.getLogger("gateway.runner.events")

Persist = Callable[[str, str, list[bytes]], Awaitable[None]]
Alive = Callable[[str, str], Awaitable[bool]]


@dataclass(frozen=True)
class Backoff:
    first: float = 1.0
    factor: float = 1.5
    cap: float = 30.0

    def delay(self, failures: int) -> float:
        """The wait after `failures` consecutive failed connections (failures >= 1)."""
        return min(self.cap, self.first * self.factor ** min(failures - 1, 64))


class NoEventsRoute(Exception):
    """The runner answered 404 or 405: it has no between-run events stream."""


class BetweenRuns:
    """The listeners, one per session at most, all tasks of `tasks` (the owner's group)."""

    def __init__(self, runner: RunnerClient, tasks: anyio.abc.TaskGroup, persist: Persist, alive: Alive, *,
                 max_event_bytes: int, backoff: Backoff | None = None) -> None:
        self.runner = runner
        self._persist = persist
        self._alive = alive
        self._max_bytes = max_event_bytes
        self.backoff = backoff or Backoff()
        self._tasks = tasks
        self.listening: dict[tuple[str, str], anyio.Event] = {}  # session -> wakes its listener's backoff
        self.connections = 0

    def ensure(self, project: str, session: str) -> None:
        """Start the session's listener, or end its backoff wait: a run just started, so the
        runner is up and the next connection should not wait up to 30 s."""
        key = (project, session)
        if key in self.listening:
            self.listening[key].set()
            return
        if self._tasks.cancel_scope.cancel_called:
            return
        self.listening[key] = anyio.Event()
        self._tasks.start_soon(self._listen, project, session)

    async def _listen(self, project: str, session: str) -> None:
        ids = {"project": project, "session": session}
        failures = 0
        try:
            while True:
                try:
                    delivered, problem = await self._connect(project, session)
                except NoEventsRoute:
                    log.info("runner has no between-run events route; not listening", extra=ids)
                    return
                if delivered:
                    failures = 0
                    continue
                failures += 1
                if not await self._alive(project, session):
                    log.info("session gone or stopped; between-run listener ends", extra=ids)
                    return
                delay = self.backoff.delay(failures)
                log.info("between-run events: reconnecting", extra=ids | {"failures": failures, "delay": delay,
                                                                         "reason": problem})
                with anyio.move_on_after(delay):
                    await self.listening[(project, session)].wait()
                self.listening[(project, session)] = anyio.Event()
        finally:
            del self.listening[(project, session)]

    async def _connect(self, project: str, session: str) -> tuple[int, str]:
        """One connection, its events persisted until it ends: (events persisted, how it ended)."""
        delivered = 0
        try:
            url = await self.runner.base_url(project, session) + f"events/{session}"
            headers = {"accept": "text/event-stream", **await self.runner.headers(project, session)}
            async with self.runner.http.stream("GET", url, headers=headers) as resp:
                self.connections += 1
                if resp.status_code in (404, 405):
                    raise NoEventsRoute
                if resp.status_code >= 300:
                    raise await self.runner.error(project, session, resp)
                async for batch in sse_events(resp.aiter_bytes()):
                    lines = [line for data in batch if (line := event_line(data, self._max_bytes)) is not None]
                    if lines:
                        await self._persist(project, session, lines)
                        delivered += len(lines)
        except RunnerError as exc:
            return delivered, exc.message
        except (httpx.HTTPError, StoreError) as exc:
            return delivered, repr(exc)
        return delivered, "closed"
