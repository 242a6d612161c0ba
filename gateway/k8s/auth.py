"""`GATEWAY_AUTH=kubernetes`: the cluster decides, exactly as it does for the platform's own API.

A bearer token is checked with a TokenReview (who is this?), then the user is checked with a
SubjectAccessReview for `verb` on `agenticsessions.vteam.ambient-code` in namespace = project
(may they?). Both answers are cached for `ttl` seconds, so a browser opening many streams costs
two API calls, not two per request; identical checks in flight at once share one API call.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import anyio
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from gateway.auth import ALL_PROJECTS, AuthBackendError, AuthDecision
from gateway.k8s.catalog import GROUP, PLURAL
from gateway.k8s.client import TRANSPORT_ERRORS

K = TypeVar("K")
V = TypeVar("V")


@dataclass(frozen=True)
class Identity:
    """The user a TokenReview returned; hashable so it can key the SubjectAccessReview cache."""

    username: str
    uid: str | None
    groups: tuple[str, ...]
    extra: tuple[tuple[str, tuple[str, ...]], ...]


@dataclass(frozen=True)
class _Review:
    identity: Identity | None  # None: the token was not accepted
    reason: str


@dataclass(frozen=True)
class _Access:
    allowed: bool
    reason: str


@dataclass
class _InFlight:
    done: anyio.Event = field(default_factory=anyio.Event)
    error: AuthBackendError | None = None


class TTLCache(Generic[K, V]):
    """Least-recently-used cache whose entries expire `ttl` seconds after they were loaded.

    `get` loads a missing key once, however many tasks ask for it at the same time. Failures are
    shared with the tasks that waited but never cached, so an API outage is retried by the next
    request rather than remembered.
    """

    def __init__(self, ttl: float, max_entries: int, clock: Callable[[], float]) -> None:
        self._ttl = ttl
        self._max = max_entries
        self._clock = clock
        self._entries: OrderedDict[K, tuple[float, V]] = OrderedDict()
        self._loading: dict[K, _InFlight] = {}

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, key: K, load: Callable[[], Awaitable[V]]) -> V:
        while True:
            hit = self._entries.get(key)
            if hit is not None:
                if hit[0] > self._clock():
                    self._entries.move_to_end(key)
                    return hit[1]
                del self._entries[key]
            flight = self._loading.get(key)
            if flight is None:
                return await self._load(key, load)
            await flight.done.wait()
            if flight.error is not None:
                raise AuthBackendError(str(flight.error)) from flight.error
            # Otherwise the loader stored its value, or was cancelled: look again.

    async def _load(self, key: K, load: Callable[[], Awaitable[V]]) -> V:
        flight: _InFlight = _InFlight()
        self._loading[key] = flight
        try:
            value = await load()
        except AuthBackendError as exc:
            flight.error = exc
            raise
        finally:
            del self._loading[key]
            flight.done.set()
        self._entries[key] = (self._clock() + self._ttl, value)
        if len(self._entries) > self._max:
            self._entries.popitem(last=False)
        return value


class KubernetesAuthorizer:
    """Authorizer backed by TokenReview + SubjectAccessReview.

    `audiences`, when given, are the audiences a token must have been issued for (a projected
    service account token with `audience: agui-gateway`, say); by default the API server's own.
    Tokens are cached by their SHA-256, never kept themselves. Any failure to ask the API server
    raises `AuthBackendError`: an outage never turns into access.
    """

    def __init__(
        self,
        api: client.ApiClient,
        ttl: float = 30.0,
        audiences: list[str] | None = None,
        *,
        max_entries: int = 10_000,
        request_timeout: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._authn = client.AuthenticationV1Api(api)
        self._authz = client.AuthorizationV1Api(api)
        self._audiences = audiences
        self._timeout = request_timeout
        self._reviews: TTLCache[bytes, _Review] = TTLCache(ttl, max_entries, clock)
        self._access: TTLCache[tuple[Identity, str, str], _Access] = TTLCache(ttl, max_entries, clock)

    async def check(self, token: str | None, project: str, verb: str) -> AuthDecision:
        if not token:
            return AuthDecision("unauthenticated", None, "no credential")
        key = hashlib.sha256(token.encode()).digest()
        review = await self._reviews.get(key, lambda: self._token_review(token))
        if review.identity is None:
            return AuthDecision("unauthenticated", None, review.reason)
        who = review.identity
        access = await self._access.get((who, project, verb), lambda: self._access_review(who, project, verb))
        if not access.allowed:
            return AuthDecision("forbidden", who.username, access.reason)
        return AuthDecision("ok", who.username, access.reason)

    async def _token_review(self, token: str) -> _Review:
        spec = client.V1TokenReviewSpec(token=token, audiences=self._audiences)
        body = client.V1TokenReview(spec=spec)
        result = await self._call("TokenReview", self._authn.create_token_review, body)
        status = result.status
        user = status.user if status is not None else None
        if status is None or not status.authenticated or user is None or not user.username:
            error = status.error if status is not None else None
            return _Review(None, f"token rejected: {error}" if error else "token rejected")
        extra = tuple(sorted((k, tuple(v or ())) for k, v in (user.extra or {}).items()))
        return _Review(Identity(user.username, user.uid, tuple(user.groups or ()), extra), "token accepted")

    async def _access_review(self, who: Identity, project: str, verb: str) -> _Access:
        spec = client.V1SubjectAccessReviewSpec(
            user=who.username,
            uid=who.uid,
            groups=list(who.groups),
            extra={k: list(v) for k, v in who.extra} or None,
            resource_attributes=client.V1ResourceAttributes(
                group=GROUP, resource=PLURAL, verb=verb, namespace=None if project == ALL_PROJECTS else project
            ),
        )
        body = client.V1SubjectAccessReview(spec=spec)
        result = await self._call("SubjectAccessReview", self._authz.create_subject_access_review, body)
        status = result.status
        if status is None or not status.allowed:
            denied = f"{who.username} may not {verb} {PLURAL}.{GROUP} in namespace {project}"
            reason = status.reason if status is not None else None
            return _Access(False, f"{denied}: {reason}" if reason else denied)
        return _Access(True, status.reason or "allowed")

    async def _call(self, what: str, create: Callable[..., Awaitable[Any]], body: Any) -> Any:
        try:
            return await create(body, _request_timeout=self._timeout)
        except ApiException as exc:
            raise AuthBackendError(f"{what} failed: HTTP {exc.status} {exc.reason}") from exc
        except TRANSPORT_ERRORS as exc:
            raise AuthBackendError(f"{what} failed: {exc!r}") from exc
