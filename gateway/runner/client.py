"""Talking to a session's runner: its address, the run stream (SSE), interrupts and capabilities.

The runner contract (docs/runs.md): `POST <base>` with a `RunAgentInput` answers an AG-UI SSE
stream; `POST <base>interrupt` with `{"runId"}` stops a run (2xx, or 404 for a run it does not
know); `GET <base>capabilities` answers a JSON object (404: the runner declares none).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
import orjson

from gateway.sessions.catalog import CatalogError, SessionCatalog
from gateway.store.lines import one_line

log = logging.getLogger("gateway.runner")

DEFAULT_PORT = 8001
ERROR_BODY_BYTES = 1024
"""At most this much of a runner's error body is read and repeated: it may be anything."""
CAPABILITIES_TTL = 10.0
"""Seconds a session's capabilities answer is reused; they change only when the runner restarts."""
CONNECT_TIMEOUT = 5.0
REQUEST_TIMEOUT = 10.0
RETRY_STATUSES = frozenset({502, 503, 504})
"""Answers of a proxy or service in front of a runner that is still starting: retried like a refused connection."""


@dataclass(frozen=True)
class RetryPolicy:
    """How long a run waits for its runner to come up: `tries` attempts, delays growing by `factor`."""

    tries: int = 15
    first_delay: float = 0.5
    factor: float = 1.5
    max_delay: float = 5.0

    def delays(self) -> list[float]:
        """The pauses between attempts (one fewer than `tries`)."""
        out, delay = [], self.first_delay
        for _ in range(self.tries - 1):
            out.append(min(delay, self.max_delay))
            delay *= self.factor
        return out


class RunnerError(Exception):
    """The runner could not be reached or refused the request; `status` is what the gateway answers."""

    def __init__(self, status: int, code: str, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.retryable = status, code, message, retryable


def unreachable(url: str, exc: Exception, tries: int = 1) -> RunnerError:
    """What a client is told when the runner cannot be reached: never the runner's internal
    address (that stays in the gateway's log)."""
    log.warning("runner not reachable", extra={"url": url, "tries": tries, "error": repr(exc)})
    after = f" after {tries} tries" if tries > 1 else ""
    return RunnerError(502, "runner_unavailable", f"cannot reach the session's runner{after}: {type(exc).__name__}")


async def read_capped(resp: httpx.Response, limit: int = ERROR_BODY_BYTES) -> str:
    """The start of a body, never more than `limit` bytes read from the network."""
    data = b""
    async for chunk in resp.aiter_raw():
        data += chunk
        if len(data) >= limit:
            break
    return data[:limit].decode("utf-8", "replace")


async def error_of(resp: httpx.Response) -> RunnerError:
    body = await read_capped(resp)
    return RunnerError(502, "runner_error", f"runner answered {resp.status_code}: {body}",
                       retryable=resp.status_code in RETRY_STATUSES)


async def sse_events(chunks: AsyncIterator[bytes]) -> AsyncIterator[list[bytes]]:
    """The `data` of SSE events, one list per network read (events that arrived together).

    Multi-line data is joined with "\\n" as the SSE spec says; comments, `id`, `event` and `retry`
    fields are dropped, since the gateway assigns its own ids.
    """
    buf = b""
    async for chunk in chunks:
        buf += chunk.replace(b"\r\n", b"\n")
        *blocks, buf = buf.split(b"\n\n")
        batch = [data for block in blocks if (data := _data_of(block))]
        if batch:
            yield batch
    if data := _data_of(buf):
        yield [data]


def event_line(data: bytes, max_bytes: int) -> bytes | None:
    """An SSE event's data as a log line, or None when it is not an AG-UI event object (a JSON
    object with a string `type`) or is over `max_bytes`."""
    line = one_line(data)
    if len(line) > max_bytes:
        return None
    try:
        event = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    return line if isinstance(event, dict) and isinstance(event.get("type"), str) else None


def _data_of(block: bytes) -> bytes:
    parts = []
    for line in block.split(b"\n"):
        if line.startswith(b"data:"):
            value = line[5:]
            parts.append(value[1:] if value.startswith(b" ") else value)
    return b"\n".join(parts)


class RunnerAccess(Protocol):
    """How a session's runner is reached beyond the URL template (see `gateway.runner.hooks`)."""

    async def runner_port(self, project: str, session: str) -> int | None:
        """The session's runner port, or None to use the catalog's (else the default)."""
        ...

    async def runner_headers(self, project: str, session: str) -> dict[str, str]:
        """Headers every request to the session's runner carries (e.g. its token)."""
        ...

    def runner_refused(self, project: str, session: str) -> None:
        """The runner answered 401/403: forget any cached credential of the session."""
        ...


class DirectAccess:
    """Nothing beyond the template: the catalog's port, no extra headers."""

    async def runner_port(self, project: str, session: str) -> int | None:
        return None

    async def runner_headers(self, project: str, session: str) -> dict[str, str]:
        return {}

    def runner_refused(self, project: str, session: str) -> None:
        """No credential is cached."""


class RunnerClient:
    """Runner URLs from `GATEWAY_RUNNER_URL`, with the port from `hooks`, else from the session's
    catalog entry; every request carries the headers `hooks` give."""

    def __init__(self, http: httpx.AsyncClient, url_template: str, catalog: Callable[[], SessionCatalog],
                 hooks: RunnerAccess | None = None) -> None:
        """`catalog` is read at each use: the lifespan may swap it for the Kubernetes one."""
        self.http = http
        self.template = url_template
        self.catalog = catalog
        self.hooks: RunnerAccess = hooks or DirectAccess()
        self._capabilities: dict[tuple[str, str], tuple[float, dict[str, Any]]] = {}

    async def base_url(self, project: str, session: str) -> str:
        port = await self.hooks.runner_port(project, session)
        if port is None:
            try:
                info = await self.catalog().get(project, session)
            except CatalogError as exc:
                raise RunnerError(503, exc.code, f"cannot look up the session's runner: {exc.message}") from exc
            port = info.runner_port if info is not None and info.runner_port else DEFAULT_PORT
        url = self.template.format(session=session, project=project, port=port)
        return url if url.endswith("/") else url + "/"

    async def headers(self, project: str, session: str) -> dict[str, str]:
        """What every request to the session's runner carries (its token on the platform)."""
        return await self.hooks.runner_headers(project, session)

    async def error(self, project: str, session: str, resp: httpx.Response) -> RunnerError:
        """`error_of`, after telling the hooks when the runner refused the session's credentials."""
        if resp.status_code in (401, 403):
            self.hooks.runner_refused(project, session)
        return await error_of(resp)

    async def interrupt(self, project: str, session: str, run_id: str) -> None:
        url = await self.base_url(project, session) + "interrupt"
        headers = await self.headers(project, session)
        try:
            async with self.http.stream("POST", url, json={"runId": run_id}, headers=headers,
                                        timeout=REQUEST_TIMEOUT) as resp:
                if resp.status_code == 404:
                    raise RunnerError(404, "unknown_run", f"the runner has no run {run_id!r}: "
                                      + await read_capped(resp))
                if resp.status_code >= 300:
                    raise await self.error(project, session, resp)
        except httpx.HTTPError as exc:
            raise unreachable(url, exc) from exc

    async def capabilities(self, project: str, session: str) -> dict[str, Any]:
        """The runner's capabilities object, reused for CAPABILITIES_TTL seconds; {} if it declares none."""
        key = (project, session)
        cached = self._capabilities.get(key)
        if cached is not None and time.monotonic() - cached[0] < CAPABILITIES_TTL:
            return cached[1]
        url = await self.base_url(project, session) + "capabilities"
        headers = await self.headers(project, session)
        try:
            async with self.http.stream("GET", url, headers=headers, timeout=REQUEST_TIMEOUT) as resp:
                if resp.status_code == 404:
                    caps: Any = {}
                elif resp.status_code >= 300:
                    raise await self.error(project, session, resp)
                else:
                    caps = orjson.loads(await resp.aread())
        except httpx.HTTPError as exc:
            raise unreachable(url, exc) from exc
        except orjson.JSONDecodeError as exc:
            raise RunnerError(502, "runner_error", f"runner capabilities are not JSON: {exc}") from exc
        if not isinstance(caps, dict):
            raise RunnerError(502, "runner_error", "runner capabilities are not a JSON object")
        now = time.monotonic()
        self._capabilities = {k: v for k, v in self._capabilities.items() if now - v[0] < CAPABILITIES_TTL}
        self._capabilities[key] = (now, caps)
        return caps
