"""Runs: a `RunAgentInput` sent to the session's runner, its SSE answer appended to the log live.

Every run lives in the manager's task group (owned by the app's lifespan), not in the request
that started it, so a run goes on when its client leaves and ends with a persisted `RUN_ERROR`
when the gateway shuts down. Every way a run can end leaves a `RUN_FINISHED` or `RUN_ERROR` as
its last event, so no session looks busy forever.
"""

from __future__ import annotations

import functools
import logging
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Protocol

import anyio
import anyio.abc
import httpx
import orjson
from ag_ui.core import Message, MessagesSnapshotEvent, RunAgentInput, RunErrorEvent
from pydantic import BaseModel

from gateway.runner.ahead import ReadAhead
from gateway.runner.client import RetryPolicy, RunnerClient, RunnerError, event_line, sse_events, unreachable
from gateway.runner.hooks import Caller, NoHooks, RunHooks
from gateway.runner.status import AgentStatus, StatusCache
from gateway.sessions.catalog import SessionCatalog
from gateway.sessions.registry import Registry
from gateway.store.base import SessionLog, StoreError
from gateway.store.cursor import format_cursor

log = logging.getLogger("gateway.runs")

TERMINAL = (b"RUN_FINISHED", b"RUN_ERROR")
SHUTDOWN_WRITE_TIMEOUT = 5.0
"""How long a run cancelled by shutdown may take to persist its closing RUN_ERROR."""
RUN_TIMEOUT = httpx.Timeout(connect=5.0, read=None, write=30.0, pool=None)
"""No read timeout: an agent may think for a long time between events."""
RUN_LIMITS = httpx.Limits(max_connections=None, max_keepalive_connections=100)
"""Every run holds its runner connection for as long as it streams, and runs are one per session:
a pool limit (httpx's default is 100) would hold the runs past it unstarted until others end."""


@functools.cache
def runner_tls() -> ssl.SSLContext:
    """httpx's default TLS context (SSL_CERT_FILE, SSL_CERT_DIR or certifi's bundle), built once
    per process: each build loads the CA bundle, about 20 ms, and a process may start many
    gateways (the embedded and test ones)."""
    return httpx.create_ssl_context()


def not_serving() -> RunnerError:
    """Runs before the manager's task group is up or after it ended (start-up, shutdown)."""
    return RunnerError(503, "not_ready", "the gateway is not serving runs (starting up or shutting down)")


class RunConflict(Exception):
    """A run is already active on the session and the runner does not take concurrent runs."""


class RunLocks(Protocol):
    """The session's run slot shared by every replica (store=nats); alone, `active` is enough."""

    async def acquire(self, session: str, run_id: str) -> str | None:
        """Take the slot for `run_id`: None once taken, else the run that holds it."""
        ...

    async def release(self, session: str, run_id: str) -> None: ...


@dataclass
class Run:
    project: str
    session: str
    run_id: str
    thread_id: str
    log: SessionLog
    cursor: str | None  # position just before the run's first event (None: start of the log)
    events_after: int  # seq after which the runner's events start (the snapshot is at or before it)
    done: anyio.Event = field(default_factory=anyio.Event)

    @property
    def ids(self) -> dict[str, str]:
        return {"project": self.project, "session": self.session, "run": self.run_id}

    def stop_offset(self, data: bytes) -> int:
        """Where the run's stream stops in `data` (lines joined by b"\\n"): just past its terminal
        event, or -1. With `done`, a run is a stream's stop condition (`gateway.stream.reader`)."""
        if not any(t in data for t in TERMINAL):
            return -1
        end = -1
        for line in data.split(b"\n"):
            end += len(line) + 1
            if terminal_of(line, self.run_id):
                return end
        return -1


def new_messages(messages: list[Message]) -> list[Message]:
    """The user's turn: the messages after the last assistant message (user text, tool results)."""
    for i in range(len(messages) - 1, -1, -1):
        if messages[i].role == "assistant":
            return messages[i + 1 :]
    return messages


def encode(event: BaseModel) -> bytes:
    """One stored line; pydantic's JSON, which (unlike orjson) keeps integers beyond 64 bits
    that a client's messages may hold, as an append keeps them."""
    return event.model_dump_json(by_alias=True, exclude_none=True).encode()


def terminal_of(line: bytes, run_id: str) -> bool:
    """Whether a stored line ends run `run_id`: its RUN_FINISHED, or any RUN_ERROR (which has no runId)."""
    return terminal_kind(line, run_id) is not None


def terminal_kind(line: bytes, run_id: str) -> str | None:
    """"RUN_FINISHED" or "RUN_ERROR" when the line ends run `run_id` (see `terminal_of`), else None."""
    if not any(t in line for t in TERMINAL):
        return None
    try:
        event = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(event, dict):
        return None
    kind = event.get("type")
    if kind == "RUN_ERROR" or (kind == "RUN_FINISHED" and event.get("runId") == run_id):
        return str(kind)
    return None


class RunManager:
    """Starts runs, keeps the active ones per session, and owns their tasks and HTTP client."""

    def __init__(self, *, runner_url: str, max_event_bytes: int, registry: Registry,
                 catalog: Callable[[], SessionCatalog], retry: RetryPolicy | None = None) -> None:
        """`catalog` gives the session catalog in use at each call (see `RunnerClient`)."""
        self.runner_url, self.max_event_bytes = runner_url, max_event_bytes
        self.registry, self.catalog = registry, catalog
        self.retry = retry or RetryPolicy()
        self.active: dict[tuple[str, str], dict[str, Run]] = {}
        self._tg: anyio.abc.TaskGroup | None = None
        self._client: RunnerClient | None = None
        self._statuses = StatusCache()
        self.hooks: RunHooks = NoHooks()
        self.locks: RunLocks | None = None

    async def status(self, flog: SessionLog) -> AgentStatus:
        """`working` while this gateway proxies a run (even before its RUN_STARTED), else from the log."""
        if (flog.project, flog.session) in self.active:
            return "working"
        return await self._statuses.get(flog)

    @property
    def runner(self) -> RunnerClient:
        if self._client is None:
            raise not_serving()
        return self._client

    async def serve(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled (the app's lifespan); cancelling ends every run with a RUN_ERROR."""
        async with (httpx.AsyncClient(verify=runner_tls(), timeout=RUN_TIMEOUT, limits=RUN_LIMITS) as http,
                    anyio.create_task_group() as tg):
            self._client = RunnerClient(http, self.runner_url, self.catalog, self.hooks)
            await tg.start(self.hooks.serve, self._client)
            self._tg = tg
            task_status.started()
            try:
                await anyio.sleep_forever()
            finally:
                self._tg = None

    async def start(self, project: str, session: str, flog: SessionLog, run: RunAgentInput,
                    caller: Caller | None = None) -> Run:
        """Persist the user's new messages, then start the run in the background."""
        caller = caller or Caller(None)
        if self._tg is None:
            raise not_serving()
        running = self.active.get((project, session), {})
        if run.run_id in running:
            raise RunConflict(f"run {run.run_id!r} is already running on session {session!r}")
        if running and not await self._concurrent(project, session):
            raise RunConflict(f"session {session!r} already has a run in progress ({', '.join(running)}); "
                              "wait for it to finish or interrupt it")
        started = Run(project, session, run.run_id, run.thread_id, flog, None, flog.lines)
        # Claimed before the first await that follows the check, so a concurrent request sees it.
        self.active.setdefault((project, session), {})[run.run_id] = started
        try:
            if not running:
                await self._claim(project, session, run.run_id)
            turn = new_messages(run.messages)
            messages, lines = self.hooks.user_turn(run.run_id, run.thread_id, turn, caller)
            if messages is not turn:
                run = run.model_copy(update={"messages": run.messages[: len(run.messages) - len(turn)] + messages})
            if messages:
                lines.append(encode(MessagesSnapshotEvent(messages=messages)))
            if lines:
                result = await flog.append(lines)
                before, after = result.first - 1, result.last
            else:
                before = after = flog.lines
        except BaseException:
            await self._end(started)
            raise
        started.cursor = format_cursor(flog.epoch, before) if before else None
        started.events_after = after
        self.registry.touch(project, session)
        self._tg.start_soon(self._drive, started, run, caller)
        self.hooks.run_started(project, session)
        log.info("run started", extra=started.ids | {"messages": len(messages)})
        return started

    async def _concurrent(self, project: str, session: str) -> bool:
        """Whether the runner declares `"concurrentRuns": true`; a runner that cannot say does not."""
        try:
            return (await self.runner.capabilities(project, session)).get("concurrentRuns") is True
        except RunnerError:
            return False

    async def _claim(self, project: str, session: str, run_id: str) -> None:
        """Take the session's run slot shared with the other replicas, unless the runner takes
        concurrent runs."""
        if self.locks is None:
            return
        holder = await self.locks.acquire(session, run_id)
        if holder == run_id:
            raise RunConflict(f"run {run_id!r} is already running on session {session!r} (on another replica)")
        if holder is not None and not await self._concurrent(project, session):
            raise RunConflict(f"session {session!r} already has a run in progress ({holder}, on another replica); "
                              "wait for it to finish or interrupt it")

    async def _end(self, run: Run) -> None:
        """Free the run's slot: the shared one first, so this replica's next run finds it free."""
        if self.locks is not None:
            with anyio.CancelScope(shield=True), anyio.move_on_after(SHUTDOWN_WRITE_TIMEOUT):
                await self.locks.release(run.session, run.run_id)
        slot = self.active.get((run.project, run.session), {})
        slot.pop(run.run_id, None)
        if not slot:
            self.active.pop((run.project, run.session), None)

    async def _drive(self, run: Run, body: RunAgentInput, caller: Caller) -> None:
        try:
            try:
                await self._proxy(run, body, caller)
            except RunnerError as exc:
                await self._fail(run, exc.message, exc.code)
            except Exception as exc:
                log.exception("run crashed", extra=run.ids)
                await self._fail(run, f"the gateway failed to proxy the run: {exc!r}", "gateway_error")
            except anyio.get_cancelled_exc_class():
                with anyio.CancelScope(shield=True), anyio.move_on_after(SHUTDOWN_WRITE_TIMEOUT):
                    await self._fail(run, "the gateway shut down during the run", "gateway_shutdown")
                raise
        finally:
            await self._end(run)
            run.done.set()

    async def _fail(self, run: Run, message: str, code: str) -> None:
        log.warning("run failed", extra=run.ids | {"code": code, "reason": message})
        try:
            await run.log.append([encode(RunErrorEvent(message=message, code=code))])
        except StoreError:
            log.exception("cannot persist RUN_ERROR", extra=run.ids)

    async def _proxy(self, run: Run, body: RunAgentInput, caller: Caller) -> None:
        """Connect (retrying while the runner is not up), then append its events as they arrive."""
        runner = self.runner
        url = await runner.base_url(run.project, run.session)
        payload = body.model_dump_json(by_alias=True, exclude_none=True)
        headers = {"accept": "text/event-stream", "content-type": "application/json",
                   **await runner.headers(run.project, run.session), **self.hooks.caller_headers(caller)}
        delays = iter(self.retry.delays())
        while True:
            try:
                async with runner.http.stream("POST", url, content=payload, headers=headers) as resp:
                    if resp.status_code >= 300:
                        raise await runner.error(run.project, run.session, resp)
                    await self._copy(run, sse_events(resp.aiter_bytes()))
                    return
            except (httpx.ConnectError, httpx.ConnectTimeout, RunnerError) as exc:
                retryable = not isinstance(exc, RunnerError) or exc.retryable
                delay = next(delays, None) if retryable else None
                if delay is None:
                    if isinstance(exc, RunnerError):
                        raise
                    raise unreachable(url, exc, self.retry.tries) from exc
                log.info("runner not reachable, retrying", extra=run.ids | {"delay": delay, "error": repr(exc)})
                await anyio.sleep(delay)
            except httpx.HTTPError as exc:
                raise RunnerError(502, "runner_stream_cut", f"the runner's stream broke: {exc!r}") from exc

    async def _copy(self, run: Run, batches: AsyncIterator[list[bytes]]) -> None:
        """Append the runner's events as they arrive, read ahead while each append is made
        durable: what arrived meanwhile is the next append (`ahead.py`)."""
        ahead = ReadAhead()
        failed: Exception | None = None
        async with anyio.create_task_group() as tg:
            tg.start_soon(ahead.fill, batches)
            try:
                finished = await self._append_from(run, ahead)
            except Exception as exc:
                failed = exc  # raised below, outside the task group (which would wrap it in a group)
            tg.cancel_scope.cancel()  # what the runner sends after the run's end is not read
        if failed is not None:
            raise failed
        if finished is None:
            raise RunnerError(502, "runner_stream_cut", "the runner's stream ended before RUN_FINISHED or RUN_ERROR")
        log.info("run finished", extra=run.ids)
        if finished == "RUN_FINISHED":
            self.hooks.run_finished(run.project, run.session)

    async def _append_from(self, run: Run, ahead: ReadAhead) -> str | None:
        """Append what `ahead` read until the run's terminal event (its kind), or the end (None)."""
        max_bytes = self.max_event_bytes
        while (batch := await ahead.take()) is not None:
            lines: list[bytes] = []
            finished = None
            for data in batch:
                line = event_line(data, max_bytes)
                if line is None:
                    log.warning("dropped a runner event that is not an AG-UI event object or is too large",
                                extra=run.ids | {"bytes": len(data)})
                    continue
                lines.append(line)
                finished = terminal_kind(line, run.run_id)
                if finished:
                    break
            if lines:
                await run.log.append(lines)
                self.registry.touch(run.project, run.session)
                self.hooks.persisted(run.project, run.session, lines)
            if finished:
                return finished
        return None

