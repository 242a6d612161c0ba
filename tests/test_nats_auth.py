"""NATS credentials (GATEWAY_NATS_TOKEN_FILE, GATEWAY_NATS_CREDS, a user and password) against a
real nats-server that requires them: a wrong secret stops the gateway at startup with a clear
message, credentials revoked later make it not ready, and no secret ever reaches its output."""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path

import anyio
import httpx
import nkeys
import pytest

from tests.conftest import TLS, free_port, spawn_gateway
from tests.events import evs
from tests.natsserver import NatsServer, nats_server

pytestmark = [pytest.mark.anyio, pytest.mark.server]


def secret_file(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text + "\n")
    return str(path)


async def refused_at_startup(tmp_path: Path, server: NatsServer, **env: str) -> str:
    """The output of a gateway that must stop at startup; fails the test if it serves."""
    full = {**os.environ, "GATEWAY_STORE": "nats", "GATEWAY_NATS_URL": server.url, "GATEWAY_PORT": str(free_port()),
            "GATEWAY_STATE_DIR": str(tmp_path / "refused"), "GATEWAY_LOG_LEVEL": "debug", **env}
    with anyio.fail_after(60):
        done = await anyio.run_process([sys.executable, "-m", "gateway", "serve"], env=full, check=False,
                                       stderr=-2)  # stderr into stdout
    output = done.stdout.decode()
    assert done.returncode != 0, output
    assert "refused the gateway's credentials" in output and "GATEWAY_NATS_TOKEN_FILE" in output, output
    return output


async def test_token_auth_a_wrong_token_stops_startup_and_a_revoked_one_fails_readiness(tmp_path: Path) -> None:
    token, wrong = f"tok-{secrets.token_hex(8)}", f"tok-{secrets.token_hex(8)}"
    outputs = []
    with nats_server(tmp_path / "nats", free_port(), auth=f'token: "{token}"') as server:
        outputs.append(await refused_at_startup(tmp_path, server,
                                                GATEWAY_NATS_TOKEN_FILE=secret_file(tmp_path, "wrong", wrong)))
        seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER).decode()  # signs; the server wants a token
        creds = ("-----BEGIN NATS USER JWT-----\neyJhbGciOiJlZDI1NTE5LW5rZXkifQ.e30.x\n"
                 "------END NATS USER JWT------\n\n"
                 f"-----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n")
        outputs.append(await refused_at_startup(tmp_path, server,
                                                GATEWAY_NATS_CREDS=secret_file(tmp_path, "user.creds", creds)))
        async with spawn_gateway(tmp_path / "state", **server.env("AUTH"), GATEWAY_LOG_LEVEL="debug",
                                 GATEWAY_NATS_TOKEN_FILE=secret_file(tmp_path, "token", token)) as g, \
                httpx.AsyncClient(verify=TLS, timeout=30) as http:
            assert (await http.post(g.events_url("s"), json=evs(0, 2))).status_code == 201
            assert (await http.get(f"{g.base}/readyz")).status_code == 200
            server.stop()
            server.auth = f'token: "{wrong}"'  # the server's token changed under the running gateway
            server.start()
            with anyio.fail_after(20):
                while (ready := await http.get(f"{g.base}/readyz")).status_code == 200:
                    await anyio.sleep(0.2)
            assert ready.status_code == 503 and "NATS" in str(ready.json()["problems"])
            with anyio.fail_after(20):
                while "refused the gateway's credentials" not in g.log_path.read_text():
                    await anyio.sleep(0.2)
            outputs.append(g.log_path.read_text() + ready.text)
    assert not [out for out in outputs if token in out or wrong in out or seed in out]


async def test_user_and_password_from_the_token_file_or_the_url_never_shown(tmp_path: Path) -> None:
    password = f"pw-{secrets.token_hex(8)}"
    port = free_port()
    in_url = {"GATEWAY_NATS_URL": f"nats://gw:{password}@127.0.0.1:{port}", "GATEWAY_LOG_LEVEL": "debug"}
    with nats_server(tmp_path / "nats", port, auth=f'user: "gw", password: "{password}"') as server:
        async with spawn_gateway(tmp_path / "a", **server.env("AUTH"), GATEWAY_LOG_LEVEL="debug",
                                 GATEWAY_NATS_TOKEN_FILE=secret_file(tmp_path, "userpass", f"gw:{password}")) as a, \
                spawn_gateway(tmp_path / "b", **{**server.env("AUTH"), **in_url}) as b, \
                httpx.AsyncClient(verify=TLS, timeout=30) as http:
            assert (await http.post(a.events_url("s"), json=evs(0, 2))).status_code == 201
            assert (await http.post(b.events_url("s"), json=evs(2, 1))).status_code == 201
            server.stop()
            ready = await http.get(f"{b.base}/readyz")
            assert ready.status_code == 503 and f"nats://127.0.0.1:{server.port}" in ready.text, ready.text
            outputs = [a.log_path.read_text(), b.log_path.read_text(), ready.text]
    assert not [out for out in outputs if password in out]
