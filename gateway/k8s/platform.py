"""The runner proxy's hooks for `GATEWAY_REGISTRY=kubernetes`: what the platform's backend does on
the cluster side, each behaviour behind its own setting (docs/kubernetes.md, "Runs on the platform").

| setting | behaviour | module |
|---|---|---|
| `GATEWAY_AGENT_REGISTRY` | runner port from the session's RUNNER_TYPE | `runner_access.AgentRegistry` |
| `GATEWAY_RUNNER_TOKEN` | `X-Ambient-Session-Token` from the session's Secret | `runner_access.RunnerTokens` |
| `GATEWAY_SESSION_ACTIVITY` | `status.lastActivityTime` | `activity.SessionWrites` |
| `GATEWAY_STOP_ON_RUN_FINISHED` | desired-phase annotations after a run | `activity.SessionWrites` |
| `GATEWAY_RUNNER_EVENTS` | between-run events listener | `gateway.runner.listener` |
| `GATEWAY_SENDER_IDENTITY` | sender metadata, identity headers | `gateway.runner.identity` |
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import anyio
import anyio.abc
from ag_ui.core import Message
from kubernetes_asyncio import client

from gateway.config import Settings
from gateway.k8s.activity import SessionWrites
from gateway.k8s.catalog import KubernetesCatalog, session_info
from gateway.k8s.runner_access import REGISTRY_TTL, AgentRegistry, RunnerTokens, runner_type_of
from gateway.runner.client import DEFAULT_PORT, RunnerClient, RunnerError
from gateway.runner.hooks import Caller
from gateway.runner.identity import hidden_events, identity_headers, with_sender
from gateway.runner.listener import BetweenRuns
from gateway.sessions.catalog import CatalogError
from gateway.sessions.registry import Registry
from gateway.store.base import LogStore

log = logging.getLogger("gateway.k8s.platform")

STOPPED_PHASES = frozenset({"Stopping", "Stopped", "Completed", "Failed"})
"""Phases in which a session's runner is gone or going: its between-run listener ends."""


class Platform:
    """`RunHooks` for sessions that are AgenticSession objects."""

    def __init__(self, settings: Settings, api: client.ApiClient, catalog: KubernetesCatalog, store: LogStore,
                 registry: Registry, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._catalog = catalog
        self._store = store
        self._registry = registry
        self._clock = clock
        self._agents = AgentRegistry(settings.agent_registry, clock=clock) if settings.agent_registry else None
        self._tokens = RunnerTokens(api, clock=clock) if settings.runner_token else None
        self._api = api
        self._settings = settings
        self._ports: dict[tuple[str, str], tuple[float, int]] = {}
        self._untokened: set[str] = set()
        """Projects whose runner refused a call sent without a token (warned once each)."""
        self.writes: SessionWrites | None = None
        self.listeners: BetweenRuns | None = None

    async def serve(self, runner: RunnerClient, *,
                    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Owns the session writes and listeners in flight until cancelled."""
        s = self._settings
        async with anyio.create_task_group() as tasks:
            self.writes = SessionWrites(self._api, self._catalog, tasks, activity_interval=s.session_activity,
                                        stop_on_run_finished=s.stop_on_run_finished)
            if s.runner_events:
                self.listeners = BetweenRuns(runner, tasks, self._persist, self._alive,
                                             max_event_bytes=s.max_event_bytes)
            task_status.started()
            await anyio.sleep_forever()

    async def runner_port(self, project: str, session: str) -> int | None:
        """The agent registry's port for the session's RUNNER_TYPE (8001 without one), reused for
        REGISTRY_TTL seconds; None when the agent registry is off."""
        if self._agents is None:
            return None
        now = self._clock()
        cached = self._ports.get((project, session))
        if cached is not None and now - cached[0] < REGISTRY_TTL:
            return cached[1]
        obj = await self._object(project, session)
        if obj is None:
            raise RunnerError(404, "unknown_session", f"agenticsession {project}/{session} does not exist")
        kind = runner_type_of(obj)
        port = await self._agents.port_of(kind) if kind else session_info(project, obj).runner_port or DEFAULT_PORT
        self._ports = {k: v for k, v in self._ports.items() if now - v[0] < REGISTRY_TTL}
        self._ports[(project, session)] = (now, port)
        return port

    async def runner_headers(self, project: str, session: str) -> dict[str, str]:
        return await self._tokens.header(project, session) if self._tokens is not None else {}

    def runner_refused(self, project: str, session: str) -> None:
        """Forget the session's token; without tokens, tell the operator once per project why
        runs there may fail (the run's RUN_ERROR only says the runner refused)."""
        if self._tokens is not None:
            self._tokens.forget(project, session)
        elif project not in self._untokened:
            self._untokened.add(project)
            log.warning("runner refused a call without a runner token", extra={
                "project": project, "session": session,
                "hint": "GATEWAY_RUNNER_TOKEN is off: turn it on and grant get on secrets in this namespace "
                        "(Helm chart: list it in rbac.namespaces)"})

    def user_turn(self, run_id: str, thread_id: str, messages: list[Message],
                  caller: Caller) -> tuple[list[Message], list[bytes]]:
        if not self._settings.sender_identity:
            return messages, []
        return with_sender(messages, caller), hidden_events(run_id, thread_id, messages)

    def caller_headers(self, caller: Caller) -> dict[str, str]:
        return identity_headers(caller) if self._settings.sender_identity else {}

    def run_started(self, project: str, session: str) -> None:
        if self.listeners is not None:
            self.listeners.ensure(project, session)

    def persisted(self, project: str, session: str, lines: Sequence[bytes]) -> None:
        if self.writes is not None:
            self.writes.activity(project, session, lines)

    def run_finished(self, project: str, session: str) -> None:
        if self.writes is not None:
            self.writes.run_finished(project, session)

    async def _object(self, project: str, session: str) -> dict[str, Any] | None:
        try:
            return await self._catalog.object(project, session)
        except CatalogError as exc:
            raise RunnerError(503, exc.code, f"cannot look up the session's runner: {exc.message}") from exc

    async def _persist(self, project: str, session: str, lines: list[bytes]) -> None:
        """Between-run events: appended like a run's, so followers see them and activity moves."""
        flog = await self._store.open(project, session, create=True)
        await flog.append(lines)
        self._registry.touch(project, session)
        self.persisted(project, session, lines)

    async def _alive(self, project: str, session: str) -> bool:
        """Whether the session still exists and is not stopped; an unanswered question means yes."""
        try:
            obj = await self._catalog.object(project, session)
        except CatalogError:
            return True
        if obj is None:
            return False
        status = obj.get("status")
        return not (isinstance(status, dict) and status.get("phase") in STOPPED_PHASES)
