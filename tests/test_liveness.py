"""Session liveness and operations (PROTOCOL §6, §4 slow clients, §7 limits and shutdown)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import orjson
import pytest
import websockets
from prometheus_client.parser import text_string_to_metric_families
from websockets.exceptions import ConnectionClosed

from gateway.store.layout import keep_last_seen
from tests.conftest import TLS, RunningGateway, run_gateway, spawn_gateway
from tests.events import evs
from tests.stalled import stalled_client
from tests.streamclient import Seen, ws_read_all

pytestmark = [pytest.mark.anyio, pytest.mark.server]


def metric(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


async def metrics_text(gw: RunningGateway) -> str:
    return (await gw.http.get(gw.base + "/metrics")).text



async def test_watched_sessions_stay_fresh_and_idle_ones_are_evicted(tmp_path: Path) -> None:
    heartbeat, stale = 0.2, 0.6
    async with run_gateway(tmp_path / "state", heartbeat_interval=heartbeat, stale_after=stale,
                           sweep_interval=0.2) as gw:
        await gw.append("s", evs(0, 5))
        ws_seen = Seen()
        sse_comments: list[str] = []
        ages: list[float] = []

        async def watch_ws(ws: Any) -> None:
            async for frame in ws:
                ws_seen.take_frame(frame)

        async def watch_sse() -> None:
            async with gw.http.stream("GET", gw.events_url("s"), headers={"accept": "text/event-stream"}) as resp:
                async for line in resp.aiter_lines():
                    if line.startswith(":"):
                        sse_comments.append(line)

        async with websockets.connect(gw.events_url("s", ws=True), compression=None) as ws, \
                anyio.create_task_group() as tg:
            tg.start_soon(watch_ws, ws)
            tg.start_soon(watch_sse)
            deadline = time.monotonic() + 10 * stale  # ten times the stale age, with both streams idle
            while time.monotonic() < deadline:
                await anyio.sleep(heartbeat)
                status = (await gw.http.get(gw.base + "/v1/projects/p/sessions/s")).json()
                assert status["connections"] == 2
                ages.append(time.time() - status["lastSeen"] / 1000)
                assert "s" in gw.gateway.store.logs, "a watched session must never be evicted"
            tg.cancel_scope.cancel()
        assert max(ages) <= 2 * heartbeat + 0.1, ages  # lastSeen kept within two heartbeats of now
        assert metric(await metrics_text(gw), "gateway_sessions_evicted_total") == 0
        assert len(ws_seen.control("heartbeat")) >= 5 and sse_comments.count(": heartbeat") >= 5

        # Everyone left: after the stale age the caches go, the data stays.
        with anyio.fail_after(30):  # bounds a hang; eviction itself takes about stale + sweep
            while "s" in gw.gateway.store.logs:
                await anyio.sleep(0.05)
        text = await metrics_text(gw)
        assert metric(text, "gateway_sessions_evicted_total") == 1
        assert metric(text, "gateway_connections", transport="websocket") == 0
        seen, *_ = await ws_read_all(gw.events_url("s", ws=True) + "?follow=0")
        assert [e["n"] for e in seen.events] == list(range(5))


async def test_last_seen_survives_eviction_and_restart(tmp_path: Path) -> None:
    """lastSeen is kept in meta.json when a session is evicted and at shutdown: status never reads
    null for a session once watched, an older value never replaces a fresher one, a DELETE keeps it."""
    state = tmp_path / "state"

    async def last_seen(gw: RunningGateway, session: str) -> Any:
        return (await gw.http.get(f"{gw.base}/v1/projects/p/sessions/{session}")).json()["lastSeen"]

    async with run_gateway(state, stale_after=0.3, sweep_interval=0.1) as gw:
        await gw.append("s", evs(0, 2))
        await ws_read_all(gw.events_url("s", ws=True) + "?follow=0")
        watched = await last_seen(gw, "s")
        with anyio.fail_after(30):
            while gw.gateway.registry.entry("p", "s") is not None:  # evicted, entry dropped
                await anyio.sleep(0.05)
        assert await last_seen(gw, "s") == watched
    async with run_gateway(state) as gw:
        assert await last_seen(gw, "s") == watched
        await gw.append("t", evs(0, 1))
        await ws_read_all(gw.events_url("t", ws=True) + "?follow=0")
        watched_t = await last_seen(gw, "t")
        assert watched_t > watched
    # an older lastSeen from another process does not replace a fresher one
    keep_last_seen(state / "sessions" / "t", "p", watched_t - 1000)
    async with run_gateway(state) as gw:  # t was never evicted: kept at shutdown
        assert (await last_seen(gw, "s"), await last_seen(gw, "t")) == (watched, watched_t)
        assert (await gw.http.delete(gw.events_url("s"))).status_code < 300
        assert await last_seen(gw, "s") == watched
    assert orjson.loads((state / "sessions" / "s" / "meta.json").read_bytes())["lastSeen"] == watched


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_registry_and_resources_return_to_zero_after_200_cycles(gw: RunningGateway) -> None:
    await gw.append("s", evs(0, 50))
    url = gw.events_url("s", ws=True)
    seen_ok = Seen()
    await ws_read_all(url + "?follow=0", seen_ok)  # warm up: the log is open, pools exist
    fds_before, tasks_before = open_fds(), len(asyncio.all_tasks())

    async def clean(i: int) -> None:
        async with websockets.connect(url, compression=None) as ws:
            await ws.recv()

    async def abrupt(i: int) -> None:
        ws = await websockets.connect(url, compression=None)
        await ws.recv()
        ws.transport.abort()

    async def cancelled(i: int) -> None:
        with anyio.move_on_after(0.01 * (i % 5)):
            async with websockets.connect(url, compression=None) as ws:
                while True:
                    await ws.recv()

    async def sse(i: int) -> None:
        async with httpx.AsyncClient(verify=TLS) as http:
            with anyio.move_on_after(0.01 * (i % 5)):
                async with http.stream("GET", gw.events_url("s"), headers={"accept": "text/event-stream"}) as r:
                    async for _ in r.aiter_bytes():
                        break

    kinds = [clean, abrupt, cancelled, sse]
    for i in range(200):
        with contextlib.suppress(ConnectionClosed):
            await kinds[i % len(kinds)](i)
    with anyio.fail_after(30):  # the server notices every departure; this only bounds a hang
        while gw.gateway.registry.total or open_fds() > fds_before or len(asyncio.all_tasks()) > tasks_before:
            await anyio.sleep(0.05)
    registry = gw.gateway.registry
    assert registry.total == 0 and all(n == 0 for n in registry.by_transport.values())
    entry = registry.entry("p", "s")
    assert entry is not None and entry.open_connections == 0


async def test_stalled_client_is_cut_while_a_reading_client_keeps_up(tmp_path: Path) -> None:
    async with run_gateway(tmp_path / "state", send_timeout=1.0, heartbeat_interval=0.5) as gw:
        pad = "x" * 20_000
        for start in range(0, 1000, 100):  # ~20 MB: far more than the socket buffers hold
            await gw.append("s", [{"type": "X", "n": n, "pad": pad} for n in range(start, start + 100)])
        stalled = await stalled_client(gw.events_url("s", ws=True))
        try:
            reader = Seen()
            async with websockets.connect(gw.events_url("s", ws=True), compression=None, max_size=None) as ws:
                while not reader.control("live"):
                    reader.take_frame(await ws.recv())
                with anyio.fail_after(30):  # the stalled peer must be cut after send_timeout (1 s)
                    n = 1000
                    while metric(await metrics_text(gw), "gateway_slow_client_closes_total",
                                 transport="websocket") < 1:
                        await gw.append("s", [{"type": "X", "n": n}])  # live events keep flowing meanwhile
                        n += 1
                        while len(reader.events) < n:
                            reader.take_frame(await ws.recv())
                        await anyio.sleep(0.1)
                assert [e["n"] for e in reader.events] == list(range(n))
                assert gw.gateway.registry.total == 1  # the stalled one is gone, the reader is still here
            stalled.settimeout(5)
            with pytest.raises((ConnectionResetError, BrokenPipeError)):
                while stalled.recv(1 << 20):  # what was in flight, then the reset (SO_LINGER 0)
                    pass
        finally:
            stalled.close()


async def test_connection_limit_answers_1013_and_503(tmp_path: Path) -> None:
    """Every connection counts: the test client's idle keep-alive connection is one of the three."""
    async with run_gateway(tmp_path / "state", max_connections=3) as gw:
        await gw.append("s", evs(0, 1))
        async with websockets.connect(gw.events_url("s", ws=True)) as a, \
                websockets.connect(gw.events_url("s", ws=True)) as b:
            await a.recv()
            await b.recv()
            _, code, reason = await ws_read_all(gw.events_url("s", ws=True))
            assert code == 1013 and "limit of 3" in reason
            async with httpx.AsyncClient(verify=TLS) as other:
                resp = await other.get(gw.events_url("s"), headers={"accept": "text/event-stream"})
            assert resp.status_code == 503 and resp.json()["error"]["code"] == "too_many_connections"
        with anyio.fail_after(10):
            while gw.gateway.registry.total:
                await anyio.sleep(0.02)
        seen, code, _ = await ws_read_all(gw.events_url("s", ws=True) + "?follow=0")
        assert code == 1000 and len(seen.events) == 1


async def test_metrics_parse_and_move(gateway_factory: Callable[..., Any]) -> None:
    async with gateway_factory(metrics_sessions=True) as gw:
        await _metrics_parse_and_move(gw)


async def _metrics_parse_and_move(gw: RunningGateway) -> None:
    before = await metrics_text(gw)
    await gw.append("s", evs(0, 7))
    await ws_read_all(gw.events_url("s", ws=True) + "?follow=0")
    after = await metrics_text(gw)
    families = {f.name for f in text_string_to_metric_families(after)}
    assert {"gateway_connections", "gateway_events_sent", "gateway_bytes_sent", "gateway_replay_seconds",
            "gateway_append_seconds", "gateway_sessions_evicted", "gateway_session_last_seen_seconds",
            "gateway_slow_client_closes", "gateway_appended_events"} <= families
    assert all(name.startswith("gateway_") for name in families if not name.startswith(("python_", "process_")))
    assert metric(after, "gateway_events_sent_total", transport="websocket") - \
        metric(before, "gateway_events_sent_total", transport="websocket") == 7
    assert metric(after, "gateway_appended_events_total") == 7
    assert metric(after, "gateway_stream_closes_total", transport="websocket", reason="end") == 1
    assert metric(after, "gateway_session_last_seen_seconds", project="p", session="s") > 0
    await gw.http.post(gw.events_url("s"), content=b"nope", headers={"content-type": "application/json"})
    assert metric(await metrics_text(gw), "gateway_rejected_requests_total", status="400") == 1


async def test_sigterm_closes_streams_with_1001_and_loses_no_append(tmp_path: Path) -> None:
    async with spawn_gateway(tmp_path / "state", GATEWAY_SHUTDOWN_GRACE="3", GATEWAY_FSYNC="always") as gp, \
            httpx.AsyncClient(verify=TLS) as http:
        acked: list[int] = []
        codes: list[int | None] = []
        sse_ended = anyio.Event()
        resp = await http.post(gp.events_url("s"), json=evs(0, 1))
        acked.append(0)

        async def watcher() -> None:
            async with websockets.connect(gp.events_url("s", ws=True), compression=None) as ws:
                with contextlib.suppress(ConnectionClosed):
                    async for _ in ws:
                        pass
            codes.append(ws.close_code)

        async def sse() -> None:
            with contextlib.suppress(httpx.HTTPError):
                async with http.stream("GET", gp.events_url("s"), headers={"accept": "text/event-stream"}) as r:
                    async for _ in r.aiter_bytes():
                        pass
            sse_ended.set()

        async def writer() -> None:
            n = 1
            with contextlib.suppress(httpx.HTTPError):
                while True:
                    r = await http.post(gp.events_url("s"), json=evs(n, 1))
                    if r.status_code != 201:
                        break
                    acked.append(n)
                    n += 1

        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(watcher)
            tg.start_soon(sse)
            tg.start_soon(writer)
            while len(acked) < 20 or gp.proc.poll() is not None:
                await anyio.sleep(0.02)
            gp.proc.send_signal(signal.SIGTERM)
            started = time.monotonic()
            code = await anyio.to_thread.run_sync(gp.proc.wait, 30)
            took = time.monotonic() - started
        assert code == 0 and took < 3 + 2, took  # exit 0 within the grace period (plus process start-up slack)
        assert codes == [1001, 1001, 1001] and sse_ended.is_set()
        logged = [orjson.loads(line)["n"] for line in (gp.state_dir / "sessions/s/agui-events.jsonl").read_bytes()
                  .splitlines()]
        assert set(acked) <= set(logged), "every acknowledged append is in the log"
        assert logged == sorted(logged) and resp.status_code == 201


async def test_json_logs_carry_session_and_connection_ids(tmp_path: Path) -> None:
    async with spawn_gateway(tmp_path / "state", GATEWAY_LOG_FORMAT="json", GATEWAY_LOG_LEVEL="info") as gp, \
            httpx.AsyncClient(verify=TLS) as http:
        await http.post(gp.events_url("s"), json=evs(0, 3))
        await ws_read_all(gp.events_url("s", ws=True) + "?follow=0&token=secret-in-url")
        await http.get(gp.events_url("s") + "?token=secret-in-url")
        with anyio.fail_after(10):
            while b"stream closed" not in gp.log_path.read_bytes():
                await anyio.sleep(0.05)
    records = [orjson.loads(line) for line in gp.log_path.read_bytes().splitlines() if line.strip()]
    assert all({"ts", "level", "logger", "msg"} <= set(r) for r in records)
    closed = [r for r in records if r["msg"] == "stream closed"]
    assert closed and closed[0]["session"] == "s" and closed[0]["conn"].startswith("c")
    assert closed[0]["code"] == 1000 and closed[0]["events"] == 3
    assert any("POST /v1/projects/p/sessions/s/events" in r["msg"] for r in records)  # access log
    assert b"secret-in-url" not in gp.log_path.read_bytes(), "credentials in URLs never reach the logs"
    assert any("token=[redacted]" in r["msg"] for r in records)


async def test_a_peer_that_stops_answering_pings_is_closed_and_deregistered(tmp_path: Path) -> None:
    async with run_gateway(tmp_path / "state", heartbeat_interval=0.3) as gw:  # pings every 1 s (the floor)
        await gw.append("s", evs(0, 1))
        mute = await stalled_client(gw.events_url("s", ws=True))  # reads nothing, answers no ping
        try:
            assert gw.gateway.registry.total == 1
            with anyio.fail_after(30):  # ping interval + ping timeout, with room for a busy machine
                while gw.gateway.registry.total:
                    await anyio.sleep(0.05)
            text = await metrics_text(gw)
            assert metric(text, "gateway_connections", transport="websocket") == 0
            assert metric(text, "gateway_slow_client_closes_total", transport="websocket") == 0  # not a send timeout
        finally:
            mute.close()
