"""The compact view's cache kept current in the background, so that no first open builds it.

Two kinds of work, one session at a time:

- **Run ends.** The store calls `appended` with the lines of every append; the only work there is
  a byte search of those lines for a run's terminal event. The session's sidecar is then extended
  by the runs that finished, soon after, in the builder's own process (`background.py`), off the
  append's path and off the event loop's interpreter lock.
- **Existing volumes.** A session that is listed or opened raw is brought up to date once per
  process, after any waiting run ends (its log is opened for that and released again unless
  something else uses it).

Builds are paced: after `SLICE` CPU seconds (and the run it is in) a build lets the sidecar's lock
go and rests in proportion, so it uses at most `share` of one core. A compact stream opened on the
session meanwhile waits at most one slice for the lock, then builds what is left itself.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import anyio

from gateway.store.base import LogStore, SessionLog, SessionNotFound, StoreError
from gateway.store.layout import LOG_NAME
from gateway.stream.background import BuildError, BuildProcess
from gateway.stream.copied_sidecar import CopiedSidecar
from gateway.stream.sidecar import Sidecar

log = logging.getLogger("gateway.compact")

MAX_WANTED = 10_000
"""Sessions waiting to be checked; more are dropped (their first compact open builds them)."""
IDLE = 60.0
"""Seconds without work after which the build process is ended (the next job starts another)."""
MAX_CHECKED = 100_000
"""Sessions remembered as checked; past it the memory is cleared and they may be checked again."""

T = TypeVar("T")


def may_end_run(lines: list[bytes]) -> bool:
    """Whether one of `lines` may be a run's terminal event (a byte search; the build parses)."""
    return any(b"RUN_FINISHED" in line or b"RUN_ERROR" in line for line in reversed(lines))


@dataclass
class Work(Generic[T]):
    """What is left to build, by session (pure): run ends first, oldest first, each session once."""

    ended: OrderedDict[str, T] = field(default_factory=OrderedDict)
    wanted: OrderedDict[str, T] = field(default_factory=OrderedDict)
    checked: set[str] = field(default_factory=set)

    def run_ended(self, session: str, job: T) -> None:
        self.ended[session] = job
        self.wanted.pop(session, None)
        self._checked(session)

    def want(self, session: str, job: T) -> bool:
        """Queue a session not checked yet; False if it was, or the queue is full."""
        if session in self.checked or len(self.wanted) >= MAX_WANTED:
            return False
        self.wanted[session] = job
        self._checked(session)
        return True

    def take(self) -> tuple[str, T, bool] | None:
        """The next session, its job and whether a run ended in it; None when there is nothing."""
        for queue, ended in ((self.ended, True), (self.wanted, False)):
            if queue:
                session, job = queue.popitem(last=False)
                return session, job, ended
        return None

    def _checked(self, session: str) -> None:
        if len(self.checked) >= MAX_CHECKED:
            self.checked.clear()
        self.checked.add(session)


@dataclass(frozen=True, slots=True)
class Job:
    project: str
    log: SessionLog | None  # None: open it (a listed session)


class CacheBuilder:
    """One gateway's background builder of compact caches (`share` 0: off, streams build them)."""

    def __init__(self, store: LogStore, *, files: bool, share: float, release: Callable[[str, str], None],
                 on_built: Callable[[bool, float], None] | None = None) -> None:
        self._store = store
        self._files = files
        self.share = share
        self._release = release  # (project, session): the builder opened it, let it go unless in use
        self._on_built = on_built
        self._work: Work[Job] = Work()
        self._wake: anyio.Event | None = None
        self._process = BuildProcess(share)

    def sidecar(self, log: SessionLog) -> Sidecar:
        """The session's sidecar: the file store's log is a file it reads, another store's is copied."""
        return Sidecar(log.dir, LOG_NAME) if self._files else CopiedSidecar(log.dir)

    def appended(self, log: SessionLog, lines: list[bytes]) -> None:
        """The store's hook after each append."""
        if self.share and log.project is not None and may_end_run(lines):
            self._work.run_ended(log.session, Job(log.project, log))
            self._poke()

    def opened(self, log: SessionLog) -> None:
        """A raw stream opened the log: build its cache if it has none yet."""
        if self.share and log.project is not None and log.end and self._work.want(log.session, Job(log.project, log)):
            self._poke()

    def listed(self, project: str, sessions: list[str]) -> None:
        if self.share and any([self._work.want(s, Job(project, None)) for s in sessions]):
            self._poke()

    def _poke(self) -> None:
        if self._wake is not None:
            self._wake.set()

    async def run(self) -> None:
        try:
            while self.share:
                job = self._work.take()
                if job is None:
                    self._wake = anyio.Event()
                    with anyio.move_on_after(IDLE) as idle:
                        await self._wake.wait()
                    if idle.cancelled_caught:
                        await self._process.aclose()
                    continue
                await self._build(*job)
        finally:
            await self._process.aclose()

    async def _build(self, session: str, job: Job, ended: bool) -> None:
        flog, opened = job.log, False
        started = time.monotonic()
        try:
            if flog is None:
                opened = session not in self._store.logs
                flog = await self._store.open(job.project, session, create=False)
            await self.sidecar(flog).update(flog, self._process)
        except SessionNotFound:
            return  # listed (a catalog that lists sessions before they have a log), never written
        except (StoreError, OSError, BuildError) as exc:
            log.warning("compact cache not built", extra={"session": session, "error": str(exc)})
        finally:
            if opened:
                self._release(job.project, session)
        if self._on_built is not None:
            self._on_built(ended, time.monotonic() - started)
