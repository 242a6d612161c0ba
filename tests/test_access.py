"""Authentication and authorization on every route and transport, in token and Kubernetes modes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml

from tests.conftest import RunningGateway, run_gateway
from tests.fake_k8s import FakeKube, serve
from tests.streamclient import sse_read, ws_read_all

pytestmark = [pytest.mark.anyio, pytest.mark.server]

EVENT = [{"type": "CUSTOM", "name": "x"}]


@pytest.fixture
async def token_gw(tmp_path: Path) -> AsyncIterator[RunningGateway]:
    tokens = tmp_path / "tokens"
    tokens.write_text("# who may do what\nadmin-secret *\np-secret p\n")
    async with run_gateway(tmp_path / "state", auth="token", tokens_file=str(tokens)) as gw:
        yield gw


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


async def test_token_auth_on_http_routes(token_gw: RunningGateway) -> None:
    gw = token_gw
    url = gw.events_url("s")
    assert (await gw.http.post(url, json=EVENT)).status_code == 401
    assert (await gw.http.post(url, json=EVENT, headers=bearer("wrong"))).status_code == 401
    assert (await gw.http.post(url, json=EVENT, headers=bearer("p-secret"))).status_code == 201
    other = gw.events_url("s2", project="q")
    resp = await gw.http.post(other, json=EVENT, headers=bearer("p-secret"))
    assert resp.status_code == 403 and resp.json()["error"]["code"] == "forbidden"
    assert (await gw.http.post(other, json=EVENT, headers=bearer("admin-secret"))).status_code == 201
    for path in ("/v1/projects/p/sessions/s", "/v1/projects/p/sessions/s/export", "/v1/projects/p/sessions",
                 "/v1/projects/p/sessions/s/events"):
        assert (await gw.http.get(gw.base + path)).status_code == 401, path
        assert (await gw.http.get(gw.base + path, headers=bearer("p-secret"))).status_code == 200, path
        assert (await gw.http.get(gw.base + path + "?token=p-secret")).status_code == 200, path
    assert (await gw.http.delete(url)).status_code == 401
    for path in ("/healthz", "/readyz", "/metrics"):
        assert (await gw.http.get(gw.base + path)).status_code == 200, path


async def test_token_auth_on_streams(token_gw: RunningGateway) -> None:
    gw = token_gw
    await gw.http.post(gw.events_url("s"), json=EVENT, headers=bearer("p-secret"))
    ws_url = gw.events_url("s", ws=True) + "?follow=0"
    _, code, reason = await ws_read_all(ws_url)
    assert code == 4401 and reason
    _, code, _ = await ws_read_all(ws_url + "&token=wrong")
    assert code == 4401
    _, code, _ = await ws_read_all(ws_url + "&subscribe=no")  # the credential is asked first
    assert code == 4401
    seen, code, _ = await ws_read_all(ws_url + "&token=p-secret")
    assert code == 1000 and len(seen.events) == 1
    seen, code, _ = await ws_read_all(ws_url, additional_headers=bearer("p-secret"))
    assert code == 1000 and len(seen.events) == 1
    _, code, _ = await ws_read_all(gw.events_url("s", project="q", ws=True) + "?token=p-secret")
    assert code == 4403
    resp = await gw.http.get(gw.events_url("s") + "?follow=0", headers={"accept": "text/event-stream"})
    assert resp.status_code == 401
    events, _ = await sse_read(gw.http, gw.events_url("s") + "?follow=0&token=p-secret")
    assert len(events) == 1


def kubeconfig(path: Path, server: str, token: str) -> Path:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "fake",
        "clusters": [{"name": "fake", "cluster": {"server": server}}],
        "users": [{"name": "gw", "user": {"token": token}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "gw"}}],
    }))
    return path


async def test_kubernetes_auth_and_registry_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kube = FakeKube()
    kube.add_session("team-a", "chat", "2026-11-20T10:00:00Z", display_name="Chat")
    kube.users["alice-token"] = {"username": "alice", "groups": ["devs"]}
    kube.users["bob-token"] = {"username": "bob", "groups": []}
    kube.grants |= {("alice", "team-a", verb) for verb in ("get", "list", "update")}
    kube.grants.add(("bob", "team-a", "get"))
    async with serve(kube.app()) as url:
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
        monkeypatch.setenv("KUBECONFIG", str(kubeconfig(tmp_path / "kubeconfig", url, "gateway-token")))
        async with run_gateway(tmp_path / "state", auth="kubernetes", registry="kubernetes") as gw:
            events = gw.events_url("chat", project="team-a")
            assert (await gw.http.post(events, json=EVENT)).status_code == 401
            assert (await gw.http.post(events, json=EVENT, headers=bearer("nobody"))).status_code == 401
            assert (await gw.http.post(events, json=EVENT, headers=bearer("bob-token"))).status_code == 403
            assert (await gw.http.post(events, json=EVENT, headers=bearer("alice-token"))).status_code == 201
            # only sessions the cluster knows can be written
            unknown = gw.events_url("ghost", project="team-a")
            assert (await gw.http.post(unknown, json=EVENT, headers=bearer("alice-token"))).status_code == 404

            seen, code, _ = await ws_read_all(gw.events_url("chat", project="team-a", ws=True)
                                              + "?follow=0&token=bob-token")
            assert code == 1000 and len(seen.events) == 1
            _, code, _ = await ws_read_all(gw.events_url("chat", project="team-b", ws=True) + "?token=bob-token")
            assert code == 4403

            listing = await gw.http.get(gw.base + "/v1/projects/team-a/sessions", headers=bearer("alice-token"))
            assert listing.status_code == 200
            assert [i["session"] for i in listing.json()["items"]] == ["chat"]
            assert listing.json()["items"][0]["displayName"] == "Chat"
            bob_list = await gw.http.get(gw.base + "/v1/projects/team-a/sessions", headers=bearer("bob-token"))
            assert bob_list.status_code == 403

            assert (await gw.http.get(gw.base + "/readyz")).status_code == 200
            kube.version_failure = 503
            not_ready = await gw.http.get(gw.base + "/readyz")
            assert not_ready.status_code == 503 and "Kubernetes API unreachable" in not_ready.json()["problems"][0]
    sar_verbs = {body["spec"]["resourceAttributes"]["verb"] for body in kube.access_bodies}
    assert sar_verbs == {"get", "list", "update"}
    assert kube.authorizations and all(a == "Bearer gateway-token" for a in kube.authorizations)
