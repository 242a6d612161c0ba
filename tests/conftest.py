"""Shared fixtures: a real gateway served by uvicorn on 127.0.0.1, in the test's event loop."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import orjson
import pytest

from gateway.config import Settings
from gateway.runtime import Gateway
from gateway.server import GatewayServer, uvicorn_config
from gateway.store.base import EventLog
from tests.natsserver import NatsServer, nats_server

TLS = httpx.create_ssl_context()
"""One TLS context for every test's HTTP client: httpx builds one per client otherwise, loading the
CA bundle each time (about 20 ms; the suite makes thousands of clients, all over plain HTTP)."""

LAYERS = ("unit", "server", "external")
"""Every test has exactly one (pyproject.toml describes them); a module's is its heaviest test's."""


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    wrong = [f"{item.nodeid}: {marks or 'none'}" for item in items
             if len(marks := [m for m in LAYERS if item.get_closest_marker(m)]) != 1]
    if wrong:
        raise pytest.UsageError("each test needs exactly one of the markers " + ", ".join(LAYERS)
                                + " (e.g. pytestmark = pytest.mark.server):\n  " + "\n  ".join(wrong))


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # uvicorn and aiohttp are asyncio-only


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RunningGateway:
    settings: Settings
    gateway: Gateway
    server: GatewayServer
    http: httpx.AsyncClient

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.settings.port}"

    @property
    def ws_base(self) -> str:
        return f"ws://127.0.0.1:{self.settings.port}"

    def events_url(self, session: str, project: str = "p", *, ws: bool = False) -> str:
        base = self.ws_base if ws else self.base
        return f"{base}/v1/projects/{project}/sessions/{session}/events"

    async def append(self, session: str, events: list[dict[str, Any]], project: str = "p") -> dict[str, Any]:
        resp = await self.http.post(self.events_url(session, project), json=events)
        assert resp.status_code == 201, resp.text
        result: dict[str, Any] = resp.json()
        return result


async def stored_bytes(g: RunningGateway, session: str = "s", project: str = "p") -> bytes:
    """The session's log as the gateway's store holds it (file or NATS), read through the store."""
    log = await g.gateway.store.open(project, session, create=False)
    await log.poll()
    return await whole_log(log)


async def whole_log(log: EventLog) -> bytes:
    """Every byte `log` holds up to its end, read as a reader reads it (a read may return less)."""
    parts, offset = [], 0
    while offset < log.end:
        part = await log.read(offset, log.end - offset)
        assert part, f"log ended at byte {offset} of {log.end}"
        parts.append(part)
        offset += len(part)
    return b"".join(parts)


@contextlib.asynccontextmanager
async def run_gateway(state_dir: Path, **overrides: Any) -> AsyncIterator[RunningGateway]:
    """Serve a gateway until the block ends; `overrides` are Settings fields."""
    values: dict[str, Any] = {"state_dir": state_dir, "port": free_port(), "fsync": "never"} | overrides
    settings = Settings(**values)
    gateway = Gateway.create(settings)
    config = uvicorn_config(settings, gateway)
    config.log_level = "warning"
    server = GatewayServer(config, gateway)
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve)
        while not server.started:
            await anyio.sleep(0.01)
        async with httpx.AsyncClient(verify=TLS, timeout=30) as http:
            try:
                yield RunningGateway(settings, gateway, server, http)
            finally:
                server.should_exit = True


@pytest.fixture
def fsync() -> str:
    """GATEWAY_FSYNC for `gw` and `gateway_factory`. Modules that set `FSYNC_MODES` run each of
    their tests under every mode listed (see `pytest_generate_tests`)."""
    return "never"


@pytest.fixture
def store() -> str:
    """GATEWAY_STORE for `gw` and `gateway_factory`. Modules that set `STORES` run each of their
    tests on every store listed (see `pytest_generate_tests`)."""
    return "files"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    modes = getattr(metafunc.module, "FSYNC_MODES", None)
    if modes and "fsync" in metafunc.fixturenames:
        metafunc.parametrize("fsync", modes, ids=[f"fsync-{m}" for m in modes])
    stores = getattr(metafunc.module, "STORES", None)
    if metafunc.definition.get_closest_marker("files_only"):
        stores = None  # it writes the log files itself, as another process on the volume would
    if stores and "store" in metafunc.fixturenames:
        metafunc.parametrize("store", stores, ids=[f"store-{s}" for s in stores])


@pytest.fixture(scope="session")
def nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """One nats-server with JetStream for the whole run; each gateway gets a stream of its own."""
    with nats_server(tmp_path_factory.mktemp("nats"), free_port()) as server:
        yield server


@pytest.fixture
def store_settings(store: str, request: pytest.FixtureRequest) -> dict[str, Any]:
    """Settings fields selecting `store` (starting the shared nats-server when it is `nats`)."""
    if store == "nats":
        server: NatsServer = request.getfixturevalue("nats")
        return server.settings()
    return {}


@pytest.fixture
def gateway_factory(
    tmp_path: Path, fsync: str, store_settings: dict[str, Any]
) -> Callable[..., contextlib.AbstractAsyncContextManager[RunningGateway]]:
    def factory(**overrides: Any) -> contextlib.AbstractAsyncContextManager[RunningGateway]:
        return run_gateway(overrides.pop("state_dir", tmp_path / "state"),
                           **{"fsync": fsync, **store_settings, **overrides})

    return factory


@pytest.fixture
async def gw(tmp_path: Path, fsync: str, store_settings: dict[str, Any]) -> AsyncIterator[RunningGateway]:
    async with run_gateway(tmp_path / "state", fsync=fsync, **store_settings) as running:
        yield running


@dataclass
class GatewayProcess:
    """`agui-gateway serve` in a child process: for signals, exit codes and the server's own RSS."""

    proc: Any
    port: int
    state_dir: Path
    log_path: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def events_url(self, session: str, project: str = "p", *, ws: bool = False) -> str:
        scheme = "ws" if ws else "http"
        return f"{scheme}://127.0.0.1:{self.port}/v1/projects/{project}/sessions/{session}/events"

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")


@contextlib.asynccontextmanager
async def spawn_gateway(state_dir: Path, **env: str) -> AsyncIterator[GatewayProcess]:
    import os
    import subprocess
    import sys

    port = free_port()
    full_env = {**os.environ, "GATEWAY_STATE_DIR": str(state_dir), "GATEWAY_PORT": str(port),
                "GATEWAY_FSYNC": "never", "GATEWAY_LOG_LEVEL": "warning", **env}
    log_path = state_dir.parent / f"gateway-{port}.log"
    with open(log_path, "wb") as log_file:  # a file, not a pipe: a full pipe would stall the server
        proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve"], env=full_env,
                                stdout=log_file, stderr=subprocess.STDOUT)
    try:
        async with httpx.AsyncClient(verify=TLS) as http:
            with anyio.fail_after(30):  # a server that never comes up fails the test instead of hanging it
                while True:
                    assert proc.poll() is None, log_path.read_text()
                    try:
                        if (await http.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200:
                            break
                    except httpx.TransportError:
                        await anyio.sleep(0.05)
        yield GatewayProcess(proc, port, state_dir, log_path)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


NODE_CACHE = Path(__file__).resolve().parent.parent / ".cache" / "node"
SCRIPTS = Path(__file__).resolve().parent / "node"


@pytest.fixture(scope="session")
def node_modules() -> Path:
    """The packages of tests/node/package.json installed with npm into .cache/node/ once per test session
    (again when one of them is missing)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node and npm are needed to run the npm clients")
    NODE_CACHE.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(SCRIPTS / "package.json", NODE_CACHE / "package.json")
    wanted = orjson.loads((SCRIPTS / "package.json").read_bytes())["dependencies"]
    if not all((NODE_CACHE / "node_modules" / name / "package.json").exists() for name in wanted):
        subprocess.run([npm, "install", "--no-audit", "--no-fund", "--loglevel=error"], cwd=NODE_CACHE, check=True,
                       timeout=300)
    return NODE_CACHE / "node_modules"


async def node(node_modules: Path, script: str, *args: str, stdin: bytes | None = None) -> Any:
    """Run a script of tests/node/ with the installed npm packages; its stdout is JSON."""
    env = {**os.environ, "NODE_PATH": str(node_modules)}
    with anyio.fail_after(120):  # a hung client, not a timing check
        done = await anyio.run_process(["node", str(SCRIPTS / script), *args], env=env, check=False, input=stdin)
    assert done.returncode == 0, done.stderr.decode()
    return orjson.loads(done.stdout)
