"""Several gateway processes on one NATS JetStream (PROTOCOL §9): each with its own empty state
dir, all serving the same sessions with the same cursors."""

from __future__ import annotations

import contextlib
import secrets
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import orjson
import pytest
import websockets

from gateway.sessions import replicas as shared_liveness
from tests.conftest import TLS, GatewayProcess, free_port, run_gateway, spawn_gateway
from tests.events import evs
from tests.natsserver import NatsServer, nats_server
from tests.streamclient import Seen

pytestmark = [pytest.mark.anyio, pytest.mark.server]


@contextlib.asynccontextmanager
async def replicas(tmp_path: Path, server: NatsServer, n: int, **env: str) -> AsyncIterator[list[GatewayProcess]]:
    """`n` gateway processes on one new stream of `server`; `env`: more GATEWAY_* settings."""
    stream = f"R{secrets.token_hex(6).upper()}"
    async with contextlib.AsyncExitStack() as stack:
        procs = [await stack.enter_async_context(spawn_gateway(_empty(tmp_path / f"state-{i}"),
                                                               **server.env(stream), **env))
                 for i in range(n)]
        yield procs


def _empty(path: Path) -> Path:
    path.mkdir(parents=True)
    return path


async def post(http: httpx.AsyncClient, g: GatewayProcess, events: list[dict[str, Any]]) -> dict[str, Any]:
    resp = await http.post(g.events_url("s"), json=events)
    assert resp.status_code == 201, resp.text
    result: dict[str, Any] = resp.json()
    return result


async def test_a_follower_on_one_replica_sees_appends_through_the_others_once_in_order(
        tmp_path: Path, nats: NatsServer) -> None:
    async with replicas(tmp_path, nats, 3) as (a, b, c), httpx.AsyncClient(verify=TLS, timeout=30) as http:
        await post(http, b, evs(0, 1))
        seen = Seen()
        async with websockets.connect(a.events_url("s", ws=True), compression=None) as ws:
            while not seen.control("live"):
                seen.take_frame(await ws.recv())

            async def writer(g: GatewayProcess, start: int) -> None:
                for i in range(start, start + 100, 5):
                    await post(http, g, evs(i, 5))

            async with anyio.create_task_group() as tg:
                tg.start_soon(writer, b, 1000)
                tg.start_soon(writer, c, 2000)
            with anyio.fail_after(20):
                while len(seen.events) < 201:
                    seen.take_frame(await ws.recv())
            with anyio.fail_after(10):  # status on C counts A's follower, with a fresh lastSeen
                while (status := (await http.get(f"{c.base}/v1/projects/p/sessions/s")).json())["connections"] < 1:
                    await anyio.sleep(0.1)
            assert status["connections"] == 1 and time.time() * 1000 - status["lastSeen"] < 5000
        with anyio.fail_after(10):  # and drops it once it is gone
            while (await http.get(f"{c.base}/v1/projects/p/sessions/s")).json()["connections"]:
                await anyio.sleep(0.1)
        assert seen.seqs == list(range(1, 202))  # exactly once, in the one order every replica serves
        ns = [e["n"] for e in seen.events]
        assert sorted(ns) == [0, *range(1000, 1100), *range(2000, 2100)]
        assert [n for n in ns if n >= 2000] == list(range(2000, 2100))  # each writer's order kept
        # The same log, byte for byte, from every replica.
        exports = [(await http.get(g.events_url("s") + "?follow=0", headers={"accept": "application/x-ndjson"}))
                   .content for g in (a, b, c)]
        assert exports[0] == exports[1] == exports[2]


async def test_resume_on_another_replica_after_sigkill_mid_replay(tmp_path: Path, nats: NatsServer) -> None:
    async with replicas(tmp_path, nats, 2) as (b, c), httpx.AsyncClient(verify=TLS, timeout=30) as http:
        big = "x" * 2000
        for i in range(0, 3000, 300):
            await post(http, c, [{"type": "CUSTOM", "n": n, "pad": big} for n in range(i, i + 300)])
        seen = Seen()
        with contextlib.suppress(websockets.ConnectionClosed, OSError):
            async with websockets.connect(b.events_url("s", ws=True) + "?follow=0", compression=None,
                                          max_size=None) as ws:
                while len(seen.events) < 500:
                    seen.take_frame(await ws.recv())
                b.proc.send_signal(signal.SIGKILL)
                while True:
                    seen.take_frame(await ws.recv())
        assert 500 <= len(seen.events) < 3000
        cursor = seen.cursor
        assert cursor is not None
        resumed = Seen()
        async with websockets.connect(c.events_url("s", ws=True) + f"?follow=0&after={cursor}",
                                      compression=None, max_size=None) as ws:
            with contextlib.suppress(websockets.ConnectionClosedOK):
                while True:
                    resumed.take_frame(await ws.recv())
        assert resumed.controls[0]["reset"] is False
        both = seen.seqs + resumed.seqs
        assert both == list(range(1, 3001))  # 0 gaps, 0 duplicates
        assert [e["n"] for e in seen.events + resumed.events] == list(range(3000))


async def test_a_stream_opening_or_closing_is_counted_by_other_replicas_at_once(
        tmp_path: Path, nats: NatsServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the periodic pass out of reach (an hour), only the change itself can carry a count to
    another replica: on a loaded machine it waits for a CPU, not for a period on top."""
    monkeypatch.setattr(shared_liveness, "PASS_INTERVAL", 3600.0)
    settings = nats.settings()
    async with run_gateway(tmp_path / "a", **settings) as a, run_gateway(tmp_path / "b", **settings) as b:
        await a.append("s", evs(0, 1))

        async def counted_on_b(connections: int) -> None:
            with anyio.fail_after(30):  # a hang guard, far below the period
                while (await b.http.get(f"{b.base}/v1/projects/p/sessions/s")).json()["connections"] != connections:
                    await anyio.sleep(0.05)

        async with websockets.connect(a.events_url("s", ws=True), compression=None) as ws:
            seen = Seen()
            while not seen.control("live"):
                seen.take_frame(await ws.recv())
            await counted_on_b(1)
        await counted_on_b(0)


async def test_delete_through_one_replica_resets_followers_on_another(tmp_path: Path, nats: NatsServer) -> None:
    async with replicas(tmp_path, nats, 2) as (a, b), httpx.AsyncClient(verify=TLS, timeout=30) as http:
        first = await post(http, a, evs(0, 3))
        seen = Seen()
        async with websockets.connect(a.events_url("s", ws=True), compression=None) as ws:
            while not seen.control("live"):
                seen.take_frame(await ws.recv())
            assert (await http.delete(b.events_url("s"))).status_code in (200, 204)
            after = await post(http, b, evs(10, 2))
            with anyio.fail_after(20):
                while len(seen.events) < 5:
                    seen.take_frame(await ws.recv())
        resets = seen.control("reset")
        assert len(resets) == 1 and resets[0]["epoch"] != first["first"].split("-")[0]
        assert resets[0]["epoch"] == after["first"].split("-")[0]
        assert [e["n"] for e in seen.events] == [0, 1, 2, 10, 11]
        status = (await http.get(f"{a.base}/v1/projects/p/sessions/s")).json()
        assert status["events"] == 2 and status["epoch"] == resets[0]["epoch"]


async def test_acknowledged_events_survive_a_nats_server_restart_and_appends_recover(tmp_path: Path) -> None:
    with nats_server(tmp_path / "own-nats", free_port()) as server:
        async with replicas(tmp_path, server, 1) as (g,), httpx.AsyncClient(verify=TLS, timeout=30) as http:
            acked: list[int] = []
            refused = 0

            async def load() -> None:
                nonlocal refused
                for n in range(400):
                    resp = await http.post(g.events_url("s"), json=evs(n, 1))
                    if resp.status_code == 201:
                        acked.append(n)
                    else:
                        assert resp.status_code == 503, resp.text
                        assert "NATS" in resp.json()["error"]["message"]
                        refused += 1
                        await anyio.sleep(0.05)

            async with anyio.create_task_group() as tg:
                tg.start_soon(load)
                while len(acked) < 100:
                    await anyio.sleep(0.01)
                server.stop()
                await anyio.sleep(1)
                server.start()
            assert len(acked) + refused == 400 and len(acked) > 100
            await post(http, g, evs(9999, 1))  # appends work again
            body = (await http.get(g.events_url("s") + "?follow=0",
                                   headers={"accept": "application/x-ndjson"})).content
            stored = [obj["event"]["n"] for obj in map(orjson.loads, body.splitlines()) if "event" in obj]
            assert set(acked) <= set(stored)
            assert stored[-1] == 9999


async def test_an_append_larger_than_the_servers_max_payload_is_413_and_stores_nothing(
        tmp_path: Path, nats: NatsServer) -> None:
    async with replicas(tmp_path, nats, 1) as (g,), httpx.AsyncClient(verify=TLS, timeout=30) as http:
        await post(http, g, evs(0, 1))
        big = [{"type": "CUSTOM", "n": n, "pad": "x" * 100_000} for n in range(100)]  # about 10 MB > 8 MiB
        resp = await http.post(g.events_url("s"), json=big)
        assert resp.status_code == 413 and resp.json()["error"]["code"] == "too_large", resp.text
        assert "max_payload" in resp.json()["error"]["message"]
        status = (await http.get(f"{g.base}/v1/projects/p/sessions/s")).json()
        assert status["events"] == 1
        await post(http, g, big[:50])  # smaller batches go through


async def test_while_nats_is_down_appends_are_503_and_readiness_fails(tmp_path: Path) -> None:
    with nats_server(tmp_path / "own-nats", free_port()) as server:
        async with replicas(tmp_path, server, 1) as (g,), httpx.AsyncClient(verify=TLS, timeout=30) as http:
            await post(http, g, evs(0, 1))
            server.stop()
            resp = await http.post(g.events_url("s"), json=evs(1, 1))
            assert resp.status_code == 503 and resp.json()["error"]["code"] == "store_unavailable", resp.text
            assert "NATS" in resp.json()["error"]["message"]
            ready = await http.get(f"{g.base}/readyz")
            assert ready.status_code == 503 and "NATS" in str(ready.json()["problems"])
            server.start()
            with anyio.fail_after(15):
                while (await http.get(f"{g.base}/readyz")).status_code != 200:
                    await anyio.sleep(0.1)
            await post(http, g, evs(1, 1))
