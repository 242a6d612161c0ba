"""How the platform's runners are reached: the port from the agent registry, the token from a Secret.

Port: the platform never stores a runner port on the AgenticSession. The session's
`spec.environmentVariables.RUNNER_TYPE` is looked up in the agent registry, a JSON list of
`{"id": <runner type>, "container": {"port": N}, ...}` mounted from the ConfigMap
`ambient-agent-registry` (`GATEWAY_AGENT_REGISTRY`). The file is re-read at most every
`REGISTRY_TTL` seconds, as the backend does. An entry without a port means 8001.

Token: every runner call carries `X-Ambient-Session-Token`, the key `agui-token` of the Secret
`ambient-runner-token-<session>` in the session's namespace. Tokens are cached `TOKEN_TTL`
seconds per session and dropped at once when a runner refuses them; they never appear in logs or
errors (messages name the Secret and key, never a value).
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import orjson
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from gateway.k8s.client import TRANSPORT_ERRORS
from gateway.runner.client import DEFAULT_PORT, RunnerError
from gateway.sessions.catalog import is_int

REGISTRY_TTL = 60.0
TOKEN_TTL = 30.0
"""Seconds a runner token is reused: a recreated Secret is picked up within this time (at once
when the runner refuses the old one)."""
TOKEN_SECRET = "ambient-runner-token-{session}"
TOKEN_KEY = "agui-token"
TOKEN_HEADER = "X-Ambient-Session-Token"


def registry_ports(data: bytes) -> dict[str, int]:
    """Runner type -> port from the agent registry's JSON (DEFAULT_PORT where an entry has none).

    Raises ValueError for a file that is not a JSON list of objects."""
    entries = orjson.loads(data)
    if not isinstance(entries, list):
        raise ValueError("not a JSON list")
    ports: dict[str, int] = {}
    for entry in entries:
        if not isinstance(entry, dict):
            raise ValueError("an entry is not a JSON object")
        ident = entry.get("id")
        if not isinstance(ident, str):
            continue
        container = entry.get("container")
        port = container.get("port") if isinstance(container, dict) else None
        ports[ident] = port if is_int(port) and 0 < port < 65536 else DEFAULT_PORT
    return ports


def runner_type_of(obj: dict[str, Any]) -> str | None:
    """`spec.environmentVariables.RUNNER_TYPE` of an AgenticSession object, if set."""
    spec = obj.get("spec")
    env = spec.get("environmentVariables") if isinstance(spec, dict) else None
    kind = env.get("RUNNER_TYPE") if isinstance(env, dict) else None
    return kind if isinstance(kind, str) and kind else None


class AgentRegistry:
    """The agent registry file, parsed and reused for `ttl` seconds; a failed read is not cached."""

    def __init__(self, path: str, *, ttl: float = REGISTRY_TTL, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self._ttl = ttl
        self._clock = clock
        self._loaded: tuple[float, dict[str, int]] | None = None

    async def port_of(self, runner_type: str) -> int:
        ports = await self._ports()
        port = ports.get(runner_type)
        if port is None:
            known = ", ".join(sorted(ports)) or "none"
            raise RunnerError(503, "runner_type_unknown",
                              f"runner type {runner_type!r} is not in the agent registry {self.path} "
                              f"(types there: {known})")
        return port

    async def _ports(self) -> dict[str, int]:
        now = self._clock()
        if self._loaded is not None and now - self._loaded[0] < self._ttl:
            return self._loaded[1]
        try:
            ports = registry_ports(await anyio.Path(self.path).read_bytes())
        except OSError as exc:
            raise RunnerError(503, "agent_registry_unavailable",
                              f"cannot read the agent registry {self.path}: {exc.strerror}") from exc
        except ValueError as exc:
            raise RunnerError(503, "agent_registry_unavailable",
                              f"the agent registry {self.path} is not a JSON list of runner types: {exc}") from exc
        self._loaded = (now, ports)
        return ports


@dataclass
class _Token:
    expires: float
    value: str = field(repr=False)


class RunnerTokens:
    """The `X-Ambient-Session-Token` header of each session, from its Secret."""

    def __init__(self, api: client.ApiClient, *, ttl: float = TOKEN_TTL, request_timeout: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._core = client.CoreV1Api(api)
        self._ttl = ttl
        self._timeout = request_timeout
        self._clock = clock
        self._tokens: dict[tuple[str, str], _Token] = {}

    async def header(self, project: str, session: str) -> dict[str, str]:
        now = self._clock()
        cached = self._tokens.get((project, session))
        if cached is None or cached.expires <= now:
            value = await self._read(project, session)
            self._tokens = {k: t for k, t in self._tokens.items() if t.expires > now}
            cached = self._tokens[(project, session)] = _Token(now + self._ttl, value)
        return {TOKEN_HEADER: cached.value}

    def forget(self, project: str, session: str) -> None:
        self._tokens.pop((project, session), None)

    async def _read(self, project: str, session: str) -> str:
        name = TOKEN_SECRET.format(session=session)
        where = f"Secret {name} in namespace {project}"
        try:
            secret = await self._core.read_namespaced_secret(name, project, _request_timeout=self._timeout)
        except ApiException as exc:
            if exc.status == 404:
                raise RunnerError(503, "runner_token_missing",
                                  f"{where} does not exist: the runner's token (key {TOKEN_KEY}) is needed "
                                  "to call it") from None
            hint = f": the gateway needs get on secrets in {project}" if exc.status == 403 else ""
            raise RunnerError(503, "runner_token_unavailable",
                              f"cannot read {where}: HTTP {exc.status} {exc.reason}{hint}") from None
        except TRANSPORT_ERRORS as exc:
            raise RunnerError(503, "runner_token_unavailable",
                              f"cannot read {where}: {type(exc).__name__}") from None
        encoded = (secret.data or {}).get(TOKEN_KEY)
        if not encoded:
            raise RunnerError(503, "runner_token_missing", f"{where} has no key {TOKEN_KEY}")
        try:
            return base64.b64decode(encoded, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise RunnerError(503, "runner_token_missing",
                              f"key {TOKEN_KEY} of {where} is not base64 UTF-8 text") from None
