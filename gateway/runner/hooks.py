"""Where a deployment adds to the runner proxy without the proxy knowing about it.

`RunManager` and `RunnerClient` call these hooks at fixed points of a run. `NoHooks` (the default)
changes nothing; `gateway.k8s.platform.Platform` implements them for `GATEWAY_REGISTRY=kubernetes`
(the platform's runner token, agent registry ports, session activity, between-run events, sender
identity).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import anyio
import anyio.abc
from ag_ui.core import Message

from gateway.runner.client import DirectAccess, RunnerAccess, RunnerClient


@dataclass(frozen=True)
class Caller:
    """Who started a run: the authenticated user (None when auth names nobody) and their
    `Authorization` header, which the runner may get as `X-Caller-Token`. Never logged."""

    user: str | None
    authorization: str | None = field(default=None, repr=False)


class RunHooks(RunnerAccess, Protocol):
    async def serve(self, runner: RunnerClient, *,
                    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Background work for the life of the run manager (cancelled with it)."""
        ...

    def user_turn(self, run_id: str, thread_id: str, messages: list[Message],
                  caller: Caller) -> tuple[list[Message], list[bytes]]:
        """The user's new messages as stored and sent, and events to store just before them."""
        ...

    def caller_headers(self, caller: Caller) -> dict[str, str]:
        """Headers about the caller for the run request."""
        ...

    def run_started(self, project: str, session: str) -> None:
        """A run was started on the session (its events are about to flow)."""
        ...

    def persisted(self, project: str, session: str, lines: Sequence[bytes]) -> None:
        """Runner events of the session were appended to its log."""
        ...

    def run_finished(self, project: str, session: str) -> None:
        """A run of the session ended with its RUN_FINISHED."""
        ...


class NoHooks(DirectAccess):
    """Nothing added: the proxy as documented in docs/runs.md."""

    async def serve(self, runner: RunnerClient, *,
                    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()

    def user_turn(self, run_id: str, thread_id: str, messages: list[Message],
                  caller: Caller) -> tuple[list[Message], list[bytes]]:
        return messages, []

    def caller_headers(self, caller: Caller) -> dict[str, str]:
        return {}

    def run_started(self, project: str, session: str) -> None:
        """Nothing listens between runs."""

    def persisted(self, project: str, session: str, lines: Sequence[bytes]) -> None:
        """Nothing is told."""

    def run_finished(self, project: str, session: str) -> None:
        """Nothing is stopped."""
