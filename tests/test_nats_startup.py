"""A replica started while NATS is unreachable: it serves at once, alive but not ready, answers
appends 503 `store_unavailable`, connects when NATS comes up, and SIGTERM ends it (exit 0) before
and after; a shutdown it initiates logs no WARNING."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import anyio
import httpx
import orjson
import pytest

from tests.conftest import TLS, GatewayProcess, free_port, spawn_gateway
from tests.events import evs
from tests.natsserver import nats_server

pytestmark = [pytest.mark.anyio, pytest.mark.server]


async def stopped_by_sigterm(g: GatewayProcess) -> None:
    g.proc.send_signal(signal.SIGTERM)
    try:
        code = await anyio.to_thread.run_sync(lambda: g.proc.wait(timeout=20))
    except subprocess.TimeoutExpired:
        pytest.fail("SIGTERM did not end the gateway")
    assert code == 0, g.log_path.read_text()


async def test_started_before_nats_serves_unready_then_connects_and_stops_cleanly(tmp_path: Path) -> None:
    port = free_port()
    env = {"GATEWAY_STORE": "nats", "GATEWAY_NATS_URL": f"nats://127.0.0.1:{port}", "GATEWAY_NATS_STREAM": "EARLY",
           "GATEWAY_LOG_LEVEL": "info", "GATEWAY_LOG_FORMAT": "json"}
    async with spawn_gateway(tmp_path / "a", **env) as a, spawn_gateway(tmp_path / "b", **env) as b, \
            httpx.AsyncClient(verify=TLS, timeout=30) as http:
        ready = await http.get(f"{a.base}/readyz")  # spawn_gateway saw /healthz answer 200
        assert ready.status_code == 503 and f"NATS unreachable at nats://127.0.0.1:{port}" in ready.text, ready.text
        append = await http.post(a.events_url("s"), json=evs(0, 2))
        assert append.status_code == 503 and append.json()["error"]["code"] == "store_unavailable", append.text
        stream = await http.get(a.events_url("s"), params={"follow": "0"}, headers={"accept": "application/x-ndjson"})
        assert stream.status_code == 503 and stream.json()["error"]["code"] == "store_unavailable", stream.text
        await stopped_by_sigterm(b)  # still waiting for NATS
        with nats_server(tmp_path / "nats", port):
            with anyio.fail_after(30):
                while (await http.get(f"{a.base}/readyz")).status_code != 200:
                    await anyio.sleep(0.2)
            assert (await http.post(a.events_url("s"), json=evs(0, 2))).status_code == 201
            await stopped_by_sigterm(a)
    lines = [orjson.loads(line) for line in a.log_path.read_text().splitlines() if line.startswith("{")]
    connected = next(i for i, e in enumerate(lines) if e["msg"] == "connected to NATS")
    assert any(e["msg"].startswith("NATS unreachable") for e in lines[:connected])
    after = lines[connected:]
    assert [e for e in after if e["level"] not in ("info", "debug")] == []
    assert any(e["msg"] == "nats connection closed" for e in after)


async def test_credentials_refused_once_nats_is_up_keep_it_unready_with_the_reason(tmp_path: Path) -> None:
    port = free_port()
    token = tmp_path / "token"
    token.write_text("wrong\n")
    async with (spawn_gateway(tmp_path / "a", GATEWAY_STORE="nats", GATEWAY_NATS_URL=f"nats://127.0.0.1:{port}",
                              GATEWAY_NATS_TOKEN_FILE=str(token)) as a,
                httpx.AsyncClient(verify=TLS, timeout=30) as http):
        with nats_server(tmp_path / "nats", port, auth='token: "right"'):
            with anyio.fail_after(30):
                while "refused the gateway's credentials" not in (ready := await http.get(f"{a.base}/readyz")).text:
                    await anyio.sleep(0.2)
            assert ready.status_code == 503
            assert "refused the gateway's credentials" in a.log_path.read_text()
            await stopped_by_sigterm(a)
