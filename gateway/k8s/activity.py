"""What the gateway writes back on the AgenticSession: activity, and the stop after a finished run.

Activity: the platform's operator stops sessions whose `status.lastActivityTime` is too old, so
each persisted runner event moves it (RFC 3339, UTC), through the status subresource with a JSON
merge patch. Writes are throttled per session to one per `interval` seconds, except that a
`RUN_STARTED` is written at once; at most `MAX_CONCURRENT` writes are in flight, and an event that
finds them all busy is not written (the next one after the interval will be). The backend does the
same in `updateLastActivityTime`.

Stop on run finished: when a run ends with its `RUN_FINISHED` and the session's
`spec.stopOnRunFinished` is true, the annotations `ambient-code.io/desired-phase: Stopped` and
`ambient-code.io/stop-reason: run-finished` are merged into the object; the operator stops it.

Failures are logged and dropped: neither write may hold up or fail a run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from functools import partial
from typing import Any

import anyio
import anyio.abc
import orjson
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from gateway.k8s.catalog import GROUP, PLURAL, VERSION, KubernetesCatalog
from gateway.k8s.client import TRANSPORT_ERRORS
from gateway.sessions.catalog import CatalogError

log = logging.getLogger("gateway.k8s.activity")

MAX_CONCURRENT = 50
TRACKED = 10_000
"""Sessions whose last write time is kept before the quiet ones are forgotten."""
WRITE_TIMEOUT = 10.0
PATCH_OPTIONS: dict[str, Any] = {"_content_type": "application/merge-patch+json", "_request_timeout": WRITE_TIMEOUT}
"""A JSON merge patch: the client would pick a JSON patch (a list of operations) for a dict body."""
DESIRED_PHASE = "ambient-code.io/desired-phase"
STOP_REASON = "ambient-code.io/stop-reason"
STOP_ANNOTATIONS = {DESIRED_PHASE: "Stopped", STOP_REASON: "run-finished"}


def rfc3339(moment: datetime) -> str:
    """UTC with milliseconds, e.g. 2026-01-02T03:04:05.678Z (RFC 3339 allows the fraction)."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def starts_run(lines: Sequence[bytes]) -> bool:
    """Whether one of the lines is a RUN_STARTED event."""
    for line in lines:
        if b"RUN_STARTED" in line:
            event = orjson.loads(line)
            if isinstance(event, dict) and event.get("type") == "RUN_STARTED":
                return True
    return False


class Throttle:
    """At most one write per key every `interval` seconds, unless it is `immediate` (pure)."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._last: dict[tuple[str, str], float] = {}

    def due(self, key: tuple[str, str], now: float, *, immediate: bool) -> bool:
        last = self._last.get(key)
        if not immediate and last is not None and now - last < self.interval:
            return False
        if last is None and len(self._last) >= TRACKED:
            # Sessions quiet for a whole interval would be due anyway: forgetting them changes nothing.
            self._last = {k: t for k, t in self._last.items() if now - t < self.interval}
        self._last[key] = now
        return True


class SessionWrites:
    """Writes `lastActivityTime` and the stop annotations, as tasks of `tasks` (the owner's group)."""

    def __init__(self, api: client.ApiClient, catalog: KubernetesCatalog, tasks: anyio.abc.TaskGroup, *,
                 activity_interval: float, stop_on_run_finished: bool, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self._objects = client.CustomObjectsApi(api)
        self._catalog = catalog
        self._throttle = Throttle(activity_interval) if activity_interval > 0 else None
        self._stop = stop_on_run_finished
        self._clock, self._wall = clock, wall
        self._tasks = tasks
        self.in_flight = 0

    def activity(self, project: str, session: str, lines: Sequence[bytes]) -> None:
        if self._throttle is None or not lines:
            return
        if not self._throttle.due((project, session), self._clock(), immediate=starts_run(lines)):
            return
        if self.in_flight >= MAX_CONCURRENT:
            log.info("activity write skipped: too many in flight", extra={"project": project, "session": session})
            return
        body = {"status": {"lastActivityTime": rfc3339(self._wall())}}
        self._spawn(partial(self._patch, project, session, body, status=True, what="lastActivityTime"))

    def run_finished(self, project: str, session: str) -> None:
        if self._stop:
            self._spawn(partial(self._stop_if_asked, project, session))

    def _spawn(self, write: Callable[[], Awaitable[None]]) -> None:
        if self._tasks.cancel_scope.cancel_called:
            return  # shutting down
        self.in_flight += 1
        self._tasks.start_soon(self._counted, write)

    async def _counted(self, write: Callable[[], Awaitable[None]]) -> None:
        try:
            await write()
        finally:
            self.in_flight -= 1

    async def _stop_if_asked(self, project: str, session: str) -> None:
        try:
            obj = await self._catalog.object(project, session)
        except CatalogError as exc:
            log.warning("cannot read the session for stopOnRunFinished",
                        extra={"project": project, "session": session, "reason": exc.message})
            return
        spec = obj.get("spec") if obj is not None else None
        if not isinstance(spec, dict) or spec.get("stopOnRunFinished") is not True:
            return
        await self._patch(project, session, {"metadata": {"annotations": STOP_ANNOTATIONS}}, status=False,
                          what="stop annotations")
        log.info("run finished: session asked to stop", extra={"project": project, "session": session})

    async def _patch(self, project: str, session: str, body: Mapping[str, object], *, status: bool, what: str) -> None:
        patch = (self._objects.patch_namespaced_custom_object_status if status
                 else self._objects.patch_namespaced_custom_object)
        try:
            with anyio.fail_after(WRITE_TIMEOUT):
                await patch(GROUP, VERSION, project, PLURAL, session, body, **PATCH_OPTIONS)
        except ApiException as exc:
            log.warning(f"cannot write {what}", extra={"project": project, "session": session,
                                                      "reason": f"HTTP {exc.status} {exc.reason}"})
        except TRANSPORT_ERRORS as exc:
            log.warning(f"cannot write {what}", extra={"project": project, "session": session, "reason": repr(exc)})
