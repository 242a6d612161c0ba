"""A served gateway runs on asyncio's own event loop, even where uvloop is installed.

uvicorn picks uvloop whenever it can import it; here a stand-in `uvloop` package (no real uvloop
is installed in the test environment) refuses to make a loop, so a server that asked uvicorn for
its default would not start. The server runs in a process of its own, as `serve` runs it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import free_port

pytestmark = pytest.mark.server

SERVE = """
import asyncio, sys
from pathlib import Path
from gateway.config import Settings
from gateway.runtime import Gateway
from gateway.server import GatewayServer, uvicorn_config

settings = Settings(state_dir=Path(sys.argv[1]), port=int(sys.argv[2]), fsync="never")
gateway = Gateway.create(settings)
server = GatewayServer(uvicorn_config(settings, gateway), gateway)

def started() -> None:
    print(type(asyncio.get_running_loop()).__module__, flush=True)
    server.should_exit = True

server.on_started = started
server.run()
"""

STAND_IN = "def new_event_loop():\n    raise RuntimeError('uvloop was asked for a loop')\n"


def test_the_server_runs_on_asyncio_where_uvloop_is_importable(tmp_path: Path) -> None:
    (tmp_path / "uvloop").mkdir()
    (tmp_path / "uvloop" / "__init__.py").write_text(STAND_IN)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    done = subprocess.run([sys.executable, "-c", SERVE, str(tmp_path / "state"), str(free_port())],
                          capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["asyncio.unix_events"]
