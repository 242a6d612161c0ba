"""`serve --workers 2`: two gateway processes on one port and state dir act as one gateway.

Which worker serves a connection is the kernel's choice (SO_REUSEPORT); every response and
WebSocket accept names it (`X-Gateway-Worker`), so the tests open enough connections for both
workers to get some and check what each one did.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from tests.conftest import TLS, GatewayProcess, spawn_gateway
from tests.streamclient import Seen

pytestmark = [pytest.mark.anyio, pytest.mark.server]

FOLLOWERS = 24
APPENDS = 40


def _fresh_connections() -> httpx.AsyncClient:
    """Every request on a new connection, so requests spread over the workers."""
    return httpx.AsyncClient(verify=TLS, timeout=30, limits=httpx.Limits(max_keepalive_connections=0))


@contextlib.asynccontextmanager
async def _two_workers(tmp_path: Path, **env: str) -> AsyncIterator[tuple[GatewayProcess, httpx.AsyncClient]]:
    """A `--workers 2` server, once both workers answer (the first to start is enough for /healthz)."""
    async with spawn_gateway(tmp_path / "state", GATEWAY_WORKERS="2", **env) as gp, _fresh_connections() as http:
        seen: set[str] = set()
        with anyio.fail_after(30):
            while len(seen) < 2:
                seen.add((await http.get(f"{gp.base}/healthz")).headers["x-gateway-worker"])
        yield gp, http


@contextlib.asynccontextmanager
async def _followers(gp: GatewayProcess, count: int, query: str = "") -> AsyncIterator[list[ClientConnection]]:
    async with contextlib.AsyncExitStack() as stack:
        conns = [await stack.enter_async_context(websockets.connect(gp.events_url("s", ws=True) + query,
                                                                    compression=None, max_size=None))
                 for _ in range(count)]
        yield conns


def _worker(conn: ClientConnection) -> str:
    assert conn.response is not None
    return str(conn.response.headers["x-gateway-worker"])


async def _status(http: httpx.AsyncClient, gp: GatewayProcess) -> tuple[str, dict[str, Any]]:
    resp = await http.get(f"{gp.base}/v1/projects/p/sessions/s")
    assert resp.status_code == 200, resp.text
    return resp.headers["x-gateway-worker"], resp.json()


async def _live_and_watched(http: httpx.AsyncClient, gp: GatewayProcess, conns: list[ClientConnection],
                            seen: list[Seen]) -> None:
    """Read each follower up to its `live`, then wait until both workers count them all (each
    watches the log for its followers by then)."""
    for conn, into in zip(conns, seen, strict=True):
        while not into.control("live"):
            into.take_frame(await conn.recv())
    await _wait_status(http, gp, len(conns))


async def _wait_status(http: httpx.AsyncClient, gp: GatewayProcess, connections: int) -> Counter[str]:
    """Ask until both workers answered with `connections` (a worker writes its table when a stream
    opens or closes; on a loaded machine it may wait for a CPU first)."""
    answered: Counter[str] = Counter()
    with anyio.fail_after(20):
        while len(answered) < 2:
            worker, body = await _status(http, gp)
            if body["connections"] == connections:
                answered[worker] += 1
            else:
                await anyio.sleep(0.1)
    return answered


async def test_followers_on_either_worker_see_appends_through_the_other(tmp_path: Path) -> None:
    # A poll interval far beyond the test's length: only inotify can carry appends across workers.
    async with _two_workers(tmp_path, GATEWAY_POLL_INTERVAL="600") as (gp, http):
        assert (await http.post(gp.events_url("s"), json={"type": "X", "n": -1})).status_code == 201
        async with _followers(gp, FOLLOWERS, "?after=") as conns:
            by_worker = Counter(_worker(c) for c in conns)
            assert set(by_worker) == {"0", "1"}, by_worker
            seen = [Seen() for _ in conns]

            async def follow(conn: ClientConnection, into: Seen) -> None:
                while not any(e.get("type") == "END" for e in into.events):
                    into.take_frame(await conn.recv())

            appended_by: Counter[str] = Counter()
            with anyio.fail_after(60):
                await _live_and_watched(http, gp, conns, seen)
                async with anyio.create_task_group() as tg:
                    for conn, into in zip(conns, seen, strict=True):
                        tg.start_soon(follow, conn, into)
                    for n in range(APPENDS):
                        resp = await http.post(gp.events_url("s"), json={"type": "X", "n": n})
                        assert resp.status_code == 201, resp.text
                        appended_by[resp.headers["x-gateway-worker"]] += 1
                    await http.post(gp.events_url("s"), json={"type": "END"})
        assert set(appended_by) == {"0", "1"}, appended_by
        for into in seen:
            assert [e.get("n") for e in into.events] == [-1, *range(APPENDS), None], "each once, in order"
            assert into.seqs == list(range(1, APPENDS + 3))


async def test_appends_racing_through_both_workers_keep_one_epoch(tmp_path: Path) -> None:
    """Appends to one session racing each other through both workers: in each worker appends wait
    for the log's lock while it takes in the other worker's lines. Every follower gets every event
    once, in one epoch (a reset would restart its seqs)."""
    writers, each = 64, 25
    total = 1 + writers * each
    async with _two_workers(tmp_path, GATEWAY_POLL_INTERVAL="600") as (gp, http):
        assert (await http.post(gp.events_url("s"), json={"type": "X", "w": -1, "n": -1})).status_code == 201
        async with _followers(gp, 8, "?after=") as conns:
            seen = [Seen() for _ in conns]

            async def follow(conn: ClientConnection, into: Seen) -> None:
                while len(into.seqs) < total and not into.control("reset"):
                    into.take_frame(await conn.recv())

            async def write(w: int) -> None:  # keep-alive: each writer stays on the worker it got
                async with httpx.AsyncClient(verify=TLS, timeout=30) as own:
                    for n in range(each):
                        resp = await own.post(gp.events_url("s"), json={"type": "X", "w": w, "n": n})
                        assert resp.status_code == 201, resp.text

            with anyio.fail_after(60):
                await _live_and_watched(http, gp, conns, seen)
                async with anyio.create_task_group() as tg:
                    for conn, into in zip(conns, seen, strict=True):
                        tg.start_soon(follow, conn, into)
                    for w in range(writers):
                        tg.start_soon(write, w)
    expected = sorted([(-1, -1), *((w, n) for w in range(writers) for n in range(each))])
    for into in seen:
        assert not into.control("reset")
        assert into.seqs == list(range(1, total + 1))
        assert sorted((e["w"], e["n"]) for e in into.events) == expected


async def test_status_and_metrics_cover_every_worker(tmp_path: Path) -> None:
    async with _two_workers(tmp_path, GATEWAY_METRICS_SESSIONS="on") as (gp, http):
        appended: Counter[str] = Counter()
        while len(appended) < 2 or sum(appended.values()) < 10:
            resp = await http.post(gp.events_url("s"), json=[{"type": "X"}, {"type": "Y"}])
            assert resp.status_code == 201
            appended[resp.headers["x-gateway-worker"]] += 2
        async with _followers(gp, 16) as conns:
            assert set(Counter(_worker(c) for c in conns)) == {"0", "1"}
            await _wait_status(http, gp, 16)
            scrapes: dict[str, str] = {}
            with anyio.fail_after(20):
                while len(scrapes) < 2:
                    resp = await http.get(f"{gp.base}/metrics")
                    scrapes[resp.headers["x-gateway-worker"]] = resp.text
            for text in scrapes.values():
                samples = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
                           for line in text.splitlines() if line and not line.startswith("#")}
                assert samples["gateway_sessions"] == 1
                assert samples["gateway_appended_events_total"] == sum(appended.values())
                assert samples['gateway_connections{transport="websocket"}'] == 16
                assert samples['gateway_session_connections{project="p",session="s"}'] == 16
        await _wait_status(http, gp, 0)
        _, body = await _status(http, gp)
        assert body["events"] == sum(appended.values()) and body["lastSeen"] is not None


async def test_sigterm_drains_every_worker(tmp_path: Path) -> None:
    async with _two_workers(tmp_path, GATEWAY_SHUTDOWN_GRACE="3") as (gp, http):
        await http.post(gp.events_url("s"), json={"type": "X"})
        async with _followers(gp, 12) as conns:
            assert set(Counter(_worker(c) for c in conns)) == {"0", "1"}
            for conn in conns:
                while not any(line.get("control") == "live" for line in Seen().take_frame(await conn.recv())):
                    pass
            gp.proc.send_signal(signal.SIGTERM)
            codes = []
            with anyio.fail_after(15):
                for conn in conns:
                    with contextlib.suppress(websockets.ConnectionClosed):
                        while True:
                            await conn.recv()
                    codes.append(conn.close_code)
            code = await anyio.to_thread.run_sync(gp.proc.wait, 15)
        assert codes == [1001] * 12, codes
        assert code == 0, gp.log_path.read_text()
        assert not list((tmp_path / "state").parent.glob("agui-gateway-run-*")), "the run dir is not on the volume"


def _worker_pids(gp: GatewayProcess) -> set[int]:
    """The supervisor's worker processes (its other child is multiprocessing's resource tracker)."""
    pids = set()
    for proc in Path("/proc").iterdir():
        with contextlib.suppress(OSError, ValueError):
            stat = (proc / "stat").read_text()
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            if parent == gp.proc.pid and b"spawn_main" in (proc / "cmdline").read_bytes():
                pids.add(int(proc.name))
    return pids


async def test_a_dead_worker_is_replaced(tmp_path: Path) -> None:
    async with _two_workers(tmp_path) as (gp, http):
        pids = _worker_pids(gp)
        assert len(pids) == 2
        victim = min(pids)
        os.kill(victim, signal.SIGKILL)
        with anyio.fail_after(30):
            while len(now := _worker_pids(gp) - {victim}) < 2:
                await anyio.sleep(0.1)
        assert max(pids) in now and gp.proc.poll() is None
        workers: Counter[str] = Counter()
        with anyio.fail_after(30):
            while len(workers) < 2:
                resp = await http.post(gp.events_url("s"), json={"type": "X"})
                if resp.status_code == 201:
                    workers[resp.headers["x-gateway-worker"]] += 1
        assert b"worker died" in gp.log_path.read_bytes()


async def test_a_worker_that_cannot_start_stops_the_server(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.write_text("a file where the state dir should be")
    env = {**os.environ, "GATEWAY_STATE_DIR": str(state), "GATEWAY_WORKERS": "2", "GATEWAY_PORT": "0"}
    done = await anyio.to_thread.run_sync(lambda: subprocess.run(
        [sys.executable, "-m", "gateway", "serve"], env=env, capture_output=True, timeout=60, check=False))
    assert done.returncode == 1, done.stderr.decode()[-2000:]
    assert b"worker failed to start" in done.stderr


async def test_worker_connections_are_nodelay() -> None:
    """A worker's own listening socket must say TCP, or asyncio leaves Nagle on and every
    keep-alive response written in two parts waits for the client's delayed ACK."""
    from gateway.workers import reuseport_socket

    sock = reuseport_socket("127.0.0.1", 0)
    sock.listen()
    accepted: list[int] = []

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        writer.close()

    server = await asyncio.start_server(on_connect, sock=sock)
    async with server:
        _, writer = await asyncio.open_connection(*sock.getsockname())
        with anyio.fail_after(10):
            while not accepted:
                await anyio.sleep(0.01)
        writer.close()
    assert accepted == [1]
