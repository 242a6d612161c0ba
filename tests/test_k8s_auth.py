"""KubernetesAuthorizer through the real kubernetes_asyncio client against the fake API server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import anyio
import pytest
from kubernetes_asyncio import client

from gateway.auth import AuthBackendError, AuthDecision
from gateway.k8s.auth import KubernetesAuthorizer
from tests.fake_k8s import FakeKube, api_client, serve

pytestmark = [pytest.mark.anyio, pytest.mark.unit]

ALICE = {"username": "alice", "uid": "u-1", "groups": ["devs", "system:authenticated"],
         "extra": {"scopes": ["a", "b"]}}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Env:
    fake: FakeKube
    api: client.ApiClient
    clock: Clock
    authz: KubernetesAuthorizer


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    fake = FakeKube(users={"tok-alice": ALICE, "tok-bob": {"username": "bob"}},
                    grants={("group:devs", "alpha", "get"), ("bob", "beta", "list")})
    async with serve(fake.app()) as url, api_client(url) as api:
        clock = Clock()
        yield Env(fake, api, clock, KubernetesAuthorizer(api, ttl=30, clock=clock))


async def test_allowed(env: Env) -> None:
    decision = await env.authz.check("tok-alice", "alpha", "get")
    assert decision == AuthDecision("ok", "alice", "allowed")
    assert env.fake.review_bodies[0]["spec"] == {"token": "tok-alice"}
    spec = env.fake.access_bodies[0]["spec"]
    assert spec["user"] == "alice"
    assert spec["uid"] == "u-1"
    assert spec["groups"] == ["devs", "system:authenticated"]
    assert spec["extra"] == {"scopes": ["a", "b"]}
    assert spec["resourceAttributes"] == {"group": "vteam.ambient-code", "resource": "agenticsessions",
                                          "verb": "get", "namespace": "alpha"}
    assert set(env.fake.authorizations) == {"Bearer gateway-token"}  # the gateway's own credential


async def test_user_without_groups(env: Env) -> None:
    assert (await env.authz.check("tok-bob", "beta", "list")).status == "ok"


async def test_no_token_asks_nobody(env: Env) -> None:
    for token in (None, ""):
        decision = await env.authz.check(token, "alpha", "get")
        assert decision.status == "unauthenticated"
    assert sum(env.fake.counts.values()) == 0


async def test_bad_token(env: Env) -> None:
    decision = await env.authz.check("tok-mallory", "alpha", "get")
    assert decision == AuthDecision("unauthenticated", None, "token rejected: invalid bearer token")
    assert env.fake.counts["subjectaccessreview"] == 0


async def test_forbidden(env: Env) -> None:
    decision = await env.authz.check("tok-alice", "beta", "get")
    assert decision.status == "forbidden"
    assert decision.user == "alice"
    assert "may not get agenticsessions.vteam.ambient-code in namespace beta" in decision.reason
    assert (await env.authz.check("tok-alice", "alpha", "delete")).status == "forbidden"


async def test_results_are_cached(env: Env) -> None:
    for _ in range(3):
        assert (await env.authz.check("tok-alice", "alpha", "get")).status == "ok"
        assert (await env.authz.check("tok-alice", "beta", "get")).status == "forbidden"
        assert (await env.authz.check("tok-mallory", "alpha", "get")).status == "unauthenticated"
    assert env.fake.counts == {"tokenreview": 2, "subjectaccessreview": 2}
    await env.authz.check("tok-alice", "alpha", "watch")  # same user, new verb: one more access review
    assert env.fake.counts == {"tokenreview": 2, "subjectaccessreview": 3}


async def test_cache_keeps_no_token(env: Env) -> None:
    await env.authz.check("tok-alice", "alpha", "get")
    keys = list(env.authz._reviews._entries)
    assert len(keys) == 1
    assert b"tok-alice" not in keys[0]
    assert len(keys[0]) == 32


async def test_entries_expire_after_ttl(env: Env) -> None:
    await env.authz.check("tok-alice", "alpha", "get")
    env.clock.now += 29
    await env.authz.check("tok-alice", "alpha", "get")
    assert env.fake.counts == {"tokenreview": 1, "subjectaccessreview": 1}
    env.clock.now += 2
    await env.authz.check("tok-alice", "alpha", "get")
    assert env.fake.counts == {"tokenreview": 2, "subjectaccessreview": 2}


async def test_cache_is_bounded(env: Env) -> None:
    env.fake.users.update({f"t{i}": {"username": f"user{i}"} for i in range(3)})
    authz = KubernetesAuthorizer(env.api, max_entries=2, clock=env.clock)
    for i in range(3):
        await authz.check(f"t{i}", "alpha", "get")
    assert len(authz._reviews) == 2
    await authz.check("t2", "alpha", "get")  # most recent: still cached
    assert env.fake.counts["tokenreview"] == 3
    await authz.check("t0", "alpha", "get")  # least recent: evicted
    assert env.fake.counts["tokenreview"] == 4


async def test_concurrent_checks_share_requests(env: Env) -> None:
    results: list[AuthDecision] = []

    async def one() -> None:
        results.append(await env.authz.check("tok-alice", "alpha", "get"))

    async with anyio.create_task_group() as tg:
        for _ in range(10):
            tg.start_soon(one)
    assert [r.status for r in results] == ["ok"] * 10
    assert env.fake.counts == {"tokenreview": 1, "subjectaccessreview": 1}


async def test_audiences_are_sent(env: Env) -> None:
    authz = KubernetesAuthorizer(env.api, audiences=["agui-gateway"])
    await authz.check("tok-alice", "alpha", "get")
    assert env.fake.review_bodies[0]["spec"] == {"token": "tok-alice", "audiences": ["agui-gateway"]}


@pytest.mark.parametrize("status", [500, 503, 403])
async def test_api_errors_raise_and_are_not_cached(env: Env, status: int) -> None:
    env.fake.review_failure = status
    with pytest.raises(AuthBackendError, match=f"TokenReview failed: HTTP {status}"):
        await env.authz.check("tok-alice", "alpha", "get")
    env.fake.review_failure = None
    assert (await env.authz.check("tok-alice", "alpha", "get")).status == "ok"


async def test_access_review_error_raises(env: Env) -> None:
    await env.authz.check("tok-alice", "alpha", "get")
    env.fake.review_failure = 500
    with pytest.raises(AuthBackendError, match="SubjectAccessReview failed: HTTP 500"):
        await env.authz.check("tok-alice", "alpha", "list")


async def test_concurrent_waiters_share_the_failure(env: Env) -> None:
    env.fake.review_failure = 500
    errors: list[BaseException] = []

    async def one() -> None:
        try:
            await env.authz.check("tok-alice", "alpha", "get")
        except AuthBackendError as exc:
            errors.append(exc)

    async with anyio.create_task_group() as tg:
        for _ in range(5):
            tg.start_soon(one)
    assert len(errors) == 5
    assert env.fake.counts == {"tokenreview": 1}


async def test_unreachable_api_server() -> None:
    async with serve(FakeKube().app()) as url:
        pass  # the server is gone once the block ends; its port refuses connections
    async with api_client(url) as api:
        with pytest.raises(AuthBackendError, match="TokenReview failed"):
            await KubernetesAuthorizer(api).check("tok-alice", "alpha", "get")
