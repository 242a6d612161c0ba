"""What replicas on one NATS JetStream share besides the logs: each session's run slot (one run at
a time across replicas) and the session list; and, on a NATS cluster, that a read through one
gateway sees every append acknowledged through another."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import anyio
import httpx
import nats
import orjson
import pytest

from examples.fake_runner import build_app
from gateway.store.nats.conn import NatsConn
from gateway.store.nats.store import NatsStore
from tests.conftest import TLS, GatewayProcess, free_port, whole_log
from tests.events import evs
from tests.natsserver import NatsServer, nats_cluster
from tests.runner_helpers import run_body, serve_runner
from tests.test_nats_replicas import replicas

pytestmark = [pytest.mark.anyio, pytest.mark.server]


def session(g: GatewayProcess, name: str, tail: str = "", project: str = "p") -> str:
    return f"{g.base}/v1/projects/{project}/sessions/{name}{tail}"


async def start_run(http: httpx.AsyncClient, g: GatewayProcess, body: dict[str, Any] | None = None) -> httpx.Response:
    return await http.post(session(g, "s", "/runs"), json=body or run_body())


async def wait_started(http: httpx.AsyncClient, g: GatewayProcess, run_id: str) -> None:
    """Until the run's RUN_STARTED is in the log: from then on the runner knows the run."""
    with anyio.fail_after(30):
        while run_id.encode() + b'"' not in (await http.get(session(g, "s", "/events?follow=0"),
                                                            headers={"accept": "application/x-ndjson"})).content:
            await anyio.sleep(0.05)


async def test_one_run_at_a_time_per_session_across_replicas(tmp_path: Path, nats: NatsServer) -> None:
    async with serve_runner(build_app(delay=60)) as port, \
            replicas(tmp_path, nats, 2, GATEWAY_RUNNER_URL=f"http://127.0.0.1:{port}/",
                     GATEWAY_HEARTBEAT_INTERVAL="1.5") as (a, b), httpx.AsyncClient(verify=TLS, timeout=30) as http:
        first = await start_run(http, a)
        assert first.status_code == 202, first.text
        run_id = first.json()["runId"]
        await anyio.sleep(5)  # past the slot's TTL (three heartbeats): A's renewals keep it
        busy = await start_run(http, b)
        assert busy.status_code == 409 and busy.json()["error"]["code"] == "run_in_progress", busy.text
        assert run_id in busy.json()["error"]["message"]
        again = await start_run(http, b, run_body(run_id=run_id))
        assert again.status_code == 409 and "already running" in again.json()["error"]["message"]

        await wait_started(http, a, run_id)  # interrupted through B: the runner ends it, A frees the slot
        assert (await http.post(session(b, "s", f"/runs/{run_id}/interrupt"))).status_code == 202
        with anyio.fail_after(20):
            while (second := await start_run(http, b)).status_code == 409:
                await anyio.sleep(0.1)
        assert second.status_code == 202, second.text
        assert (await start_run(http, a)).status_code == 409

        b.proc.send_signal(signal.SIGKILL)  # the slot of a replica that died expires
        with anyio.fail_after(20):
            while (third := await start_run(http, a)).status_code == 409:
                await anyio.sleep(0.2)
        assert third.status_code == 202, third.text
        await wait_started(http, a, third.json()["runId"])
        for run in (second, third):
            await http.post(session(a, "s", f"/runs/{run.json()['runId']}/interrupt"))


async def test_sessions_created_through_one_replica_are_listed_by_every_other(
        tmp_path: Path, nats: NatsServer) -> None:
    async with replicas(tmp_path, nats, 2) as (a, b), httpx.AsyncClient(verify=TLS, timeout=30) as http:
        for g, name, project in ((a, "s1", "p"), (b, "s2", "p"), (a, "s3", "q"), (b, "s0", "p")):
            assert (await http.post(session(g, name, "/events", project), json=evs(0, 1))).status_code == 201

        async def listed(g: GatewayProcess, project: str, query: str = "") -> dict[str, Any]:
            resp = await http.get(f"{g.base}/v1/projects/{project}/sessions{query}")
            assert resp.status_code == 200, resp.text
            body: dict[str, Any] = resp.json()
            return body

        on_a, on_b = await listed(a, "p"), await listed(b, "p")
        assert on_a == on_b and [i["session"] for i in on_a["items"]] == ["s0", "s1", "s2"]
        assert all(i["project"] == "p" and i["created"].endswith("Z") for i in on_a["items"])
        assert [i["session"] for i in (await listed(b, "q"))["items"]] == ["s3"]  # each project its own
        assert (await listed(a, "r"))["items"] == []
        assert [i["session"] for i in (await listed(b, "p", "?search=1"))["items"]] == ["s1"]
        page = await listed(b, "p", "?limit=2")
        assert [i["session"] for i in page["items"]] == ["s0", "s1"] and page["continue"]
        rest = await listed(a, "p", f"?limit=2&continue={page['continue']}")
        assert [i["session"] for i in rest["items"]] == ["s2"] and rest["continue"] is None

        assert (await http.delete(session(b, "s1", "/events"))).status_code in (200, 204)
        # A DELETE starts a new epoch: the session stays listed as it was, as with files.
        assert await listed(a, "p") == on_a
        assert (await http.get(session(a, "s1"))).json()["events"] == 0



async def _store_on(server: NatsServer, root: Path) -> NatsStore:
    """A gateway's store on one server of the cluster, once JetStream answers (a new cluster
    elects its leaders first)."""
    store = NatsStore(NatsConn((server.url,), "CLUSTER", 3), root)
    store.ensure_root()
    with anyio.fail_after(60):
        while not await store.conn.attempt(store.directory.ensure_bucket):
            await anyio.sleep(0.2)
    return store


async def _on_the_leader_first(servers: list[NatsServer], stores: list[NatsStore]) -> list[NatsStore]:
    """`stores` with the one on the stream leader's server first, after writing subjects enough
    that the other replicas fall behind now and then (from about a thousand, here): a write
    through the leader is acknowledged soonest, so a read right after it is likeliest to meet a
    replica that has not stored it yet."""
    for n in range(1500):
        await stores[0].conn.publish(f"CLUSTER.e.old{n}", b"", {})
    client = await nats.connect(servers[0].url)
    try:
        info = orjson.loads((await client.request("$JS.API.STREAM.INFO.CLUSTER", b"", timeout=10)).data)
    finally:
        await client.close()
    leader = [f"n{s.port}" for s in servers].index(info["cluster"]["leader"])
    return [stores[leader], *stores[:leader], *stores[leader + 1:]]


async def test_a_read_right_after_an_append_through_another_gateway_sees_it(tmp_path: Path) -> None:
    """Any NATS replica of a replicated stream answers a direct get, also one that has not stored
    the message just acknowledged (about one read in ten right after the ack, on this machine):
    a read through another gateway still finds the new session and every acknowledged event.
    A gateway on each NATS server, so that one of them is on the replica that lags."""
    ports = [free_port() for _ in range(6)]
    with nats_cluster(tmp_path / "nats", ports[:3], ports[3:]) as servers:
        stores = [await _store_on(server, tmp_path / f"g{i}") for i, server in enumerate(servers)]
        writer, *readers = await _on_the_leader_first(servers, stores)
        try:
            for n in range(300):
                written = await writer.open("p", f"s{n}", create=True)
                await written.append([b'{"n":0}'])
                logs = [await r.open("p", f"s{n}", create=False) for r in readers]  # not SessionNotFound
                assert [log.lines for log in logs] == [1, 1], n
                await written.append([b'{"n":1}'])
                for log in logs:
                    await log.poll()  # what a request through that gateway does first
                    assert await whole_log(log) == b'{"n":0}\n{"n":1}\n', n
        finally:
            for store in stores:
                await store.conn.aclose()
