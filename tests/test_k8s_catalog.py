"""KubernetesCatalog through the real kubernetes_asyncio client against the fake API server."""

from __future__ import annotations

import tracemalloc
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from kubernetes_asyncio import client

from gateway.k8s.catalog import SCAN_FETCH, KubernetesCatalog
from gateway.sessions.catalog import CatalogError, SessionInfo
from tests.catalogs import walk
from tests.fake_k8s import FakeKube, api_client, serve

pytestmark = [pytest.mark.anyio, pytest.mark.unit]

BIG = 3000
START = datetime(2025, 1, 1, tzinfo=UTC)
PADDING = "p" * 1000  # a realistic prompt, so holding every object would show in memory


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def created(i: int) -> str:
    # Creation order deliberately differs from name order.
    return (START + timedelta(seconds=(i * 7919) % 100_000)).strftime("%Y-%m-%dT%H:%M:%SZ")


def seeded() -> FakeKube:
    fake = FakeKube()
    for i in range(BIG):
        display = f"Task {i} Deploy" if i % 7 == 0 else f"Task {i}"
        fake.add_session("alpha", f"s-{i:04d}", created(i), display_name=display, phase="Running",
                         padding=PADDING)
    for i in range(5):
        fake.add_session("beta", f"b-{i}", created(i))
    fake.add_session("beta", "ported", created(9), status_port=9100, spec_port=9200)
    fake.add_session("beta", "spec-port", created(10), spec_port=9200, phase="Pending")
    return fake


@dataclass
class Env:
    fake: FakeKube
    catalog: KubernetesCatalog
    api: client.ApiClient


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    fake = seeded()
    async with serve(fake.app()) as url, api_client(url) as api:
        yield Env(fake, KubernetesCatalog(api), api)


def everything(fake: FakeKube, project: str) -> list[dict[str, Any]]:
    return [fake.objects[project][n] for n in fake.names(project)]


@pytest.mark.parametrize("limit", [1, 20, 100, 7])
async def test_page_covers_every_session_once(env: Env, limit: int) -> None:
    if limit == 1:  # a whole walk at limit 1 is 3000 requests; one namespace of 7 says the same
        assert await walk(env.catalog, "beta", 1) == env.fake.names("beta")
        return
    names = await walk(env.catalog, "alpha", limit)
    assert names == env.fake.names("alpha")
    assert env.fake.list_limits and max(n or 0 for n in env.fake.list_limits) <= limit
    assert None not in env.fake.list_limits
    assert env.fake.counts["list"] == -(-BIG // limit)  # one API page per page, no more


async def test_page_sends_the_clients_credential(env: Env) -> None:
    await env.catalog.page("alpha", 5, None, None)
    assert env.fake.authorizations == ["Bearer gateway-token"]


@pytest.mark.parametrize(("search", "limit"), [("deploy", 20), ("DEPLOY", 7), ("s-29", 3), ("task 1", 50)])
async def test_search_returns_each_match_once(env: Env, search: str, limit: int) -> None:
    needle = search.lower()
    expected = [o["metadata"]["name"] for o in everything(env.fake, "alpha")
                if needle in o["metadata"]["name"] or needle in o["spec"]["displayName"].lower()]
    assert expected
    assert await walk(env.catalog, "alpha", limit, search) == expected


async def test_search_pages_are_full(env: Env) -> None:
    page = await env.catalog.page("alpha", 20, None, "deploy")
    assert len(page.items) == 20
    assert page.continue_token is not None
    assert all("Deploy" in (i.display_name or "") for i in page.items)


async def test_search_without_matches(env: Env) -> None:
    page = await env.catalog.page("alpha", 10, None, "no-such-thing")
    assert page == type(page)([], None)


async def test_session_fields(env: Env) -> None:
    ported = await env.catalog.get("beta", "ported")
    assert ported == SessionInfo("beta", "ported", None, created(9), 9100, None)  # status wins over spec
    spec_port = await env.catalog.get("beta", "spec-port")
    assert spec_port is not None and (spec_port.runner_port, spec_port.phase) == (9200, "Pending")
    first = await env.catalog.get("alpha", "s-0007")
    assert first is not None
    assert first.to_json() == {"project": "alpha", "session": "s-0007", "displayName": "Task 7 Deploy",
                               "created": created(7), "runnerPort": None, "phase": "Running",
                               "claimed": True}


async def test_get_absent(env: Env) -> None:
    assert await env.catalog.get("alpha", "missing") is None
    assert await env.catalog.get("gamma", "s-0001") is None
    assert env.fake.counts["get"] == 2


def newest_first(fake: FakeKube, project: str, search: str | None = None) -> list[str]:
    objs = [o for o in everything(fake, project)
            if not search or search in o["metadata"]["name"] or search in o["spec"]["displayName"].lower()]
    objs.sort(key=lambda o: (o["metadata"]["creationTimestamp"], o["metadata"]["name"]), reverse=True)
    return [o["metadata"]["name"] for o in objs]


@pytest.mark.parametrize("offset", [0, 1, 499, 500, 2990, 2999, 3000, 5000])
async def test_offset_page_matches_sorted_list(env: Env, offset: int) -> None:
    order = newest_first(env.fake, "alpha")
    page = await env.catalog.offset_page("alpha", 20, offset, None)
    assert [i.name for i in page.items] == order[offset : offset + 20]
    assert page.total == BIG
    assert set(env.fake.list_limits) == {SCAN_FETCH}
    assert env.fake.counts["list"] == BIG // SCAN_FETCH


async def test_offset_page_search(env: Env) -> None:
    order = newest_first(env.fake, "alpha", "deploy")
    for offset in (0, 10, len(order) - 3):
        page = await env.catalog.offset_page("alpha", 10, offset, "Deploy")
        assert [i.name for i in page.items] == order[offset : offset + 10]
        assert page.total == len(order)


async def test_offset_page_memory_is_bounded(env: Env) -> None:
    """Peak allocation of an offset page must stay well below what holding the whole list takes.

    The baseline is measured the same way in the same process: walking the same API pages while
    keeping every object. Both include the transient cost of one API page on both sides of the
    fake connection, so the namespace is made 30 API pages large, and a factor of three leaves a
    wide margin (the measured gap is about seven).
    """
    for i in range(30 * SCAN_FETCH):
        env.fake.add_session("huge", f"h-{i:05d}", created(i), display_name=f"Task {i}", padding=PADDING)
    objects = client.CustomObjectsApi(env.api)

    async def hold_everything() -> int:
        kept: list[dict[str, Any]] = []
        cont: str | None = None
        while True:
            kw: dict[str, Any] = {"limit": SCAN_FETCH, **({"_continue": cont} if cont else {})}
            resp = await objects.list_namespaced_custom_object(
                "vteam.ambient-code", "v1alpha1", "huge", "agenticsessions", **kw)
            kept += resp["items"]
            cont = resp["metadata"].get("continue")
            if not cont:
                return len(kept)

    async def measure(step: Any) -> int:
        tracemalloc.start()
        try:
            await step()
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    await env.catalog.offset_page("huge", 20, 100, None)  # warm up connections and caches
    bounded = await measure(lambda: env.catalog.offset_page("huge", 20, 100, None))
    holding = await measure(hold_everything)
    assert bounded * 3 < holding, (bounded, holding)


async def test_offset_page_restarts_on_expired_continue(env: Env) -> None:
    env.fake.expire_continues = 1
    page = await env.catalog.offset_page("alpha", 5, 0, None)
    assert [i.name for i in page.items] == newest_first(env.fake, "alpha")[:5]
    assert page.total == BIG  # the aborted walk's sessions are not counted twice
    assert env.fake.counts["list"] == 2 + BIG // SCAN_FETCH  # one page, one 410, then a full walk


async def test_offset_page_gives_up_when_always_expired(env: Env) -> None:
    env.fake.expire_continues = 10**6
    with pytest.raises(CatalogError) as info:
        await env.catalog.offset_page("alpha", 5, 0, None)
    assert info.value.code == "unavailable"


async def test_page_with_expired_continue(env: Env) -> None:
    first = await env.catalog.page("alpha", 20, None, None)
    assert first.continue_token is not None
    env.fake.expire_continues = 1
    with pytest.raises(CatalogError) as info:
        await env.catalog.page("alpha", 20, first.continue_token, None)
    assert info.value.code == "expired"


async def test_malformed_token(env: Env) -> None:
    with pytest.raises(CatalogError) as info:
        await env.catalog.page("alpha", 20, "garbage!", None)
    assert info.value.code == "invalid"
    assert env.fake.counts["list"] == 0


async def test_unreachable_api_server() -> None:
    fake = FakeKube()
    async with serve(fake.app()) as url:
        pass  # the server is gone once the block ends; its port refuses connections
    async with api_client(url) as api:
        catalog = KubernetesCatalog(api)
        for call in (catalog.page("alpha", 5, None, None), catalog.get("alpha", "x"),
                     catalog.offset_page("alpha", 5, 0, None)):
            with pytest.raises(CatalogError) as info:
                await call
            assert info.value.code == "unavailable"
