"""A served gateway settles its heap once started: startup's objects frozen, young collections rarer.

Each case runs in a process of its own, since freezing and thresholds are process-wide and the
test process's own collector must stay as pytest left it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import free_port

pytestmark = pytest.mark.server

SERVE = """
import asyncio, gc, sys
from pathlib import Path
from gateway.config import Settings
from gateway.runtime import Gateway
from gateway.server import GatewayServer, YOUNG_COLLECTION_THRESHOLD, uvicorn_config

settle = sys.argv[3] == "1"
settings = Settings(state_dir=Path(sys.argv[1]), port=int(sys.argv[2]), fsync="never")
gateway = Gateway.create(settings)
server = GatewayServer(uvicorn_config(settings, gateway), gateway, settle_heap=settle)
seen = []

def started() -> None:
    seen.append((gc.get_freeze_count(), gc.get_threshold()[0]))
    server.should_exit = True

server.on_started = started
asyncio.run(server.serve())
frozen, young = seen[0]
print(frozen, young == YOUNG_COLLECTION_THRESHOLD)
"""


@pytest.mark.parametrize("settle", [True, False])
def test_a_started_server_freezes_startup_objects_and_collects_young_ones_less_often(
        tmp_path: Path, settle: bool) -> None:
    out = subprocess.run([sys.executable, "-c", SERVE, str(tmp_path / "state"), str(free_port()), str(int(settle))],
                         capture_output=True, text=True, timeout=120, check=True).stdout.split()
    frozen, raised = int(out[0]), out[1] == "True"
    if settle:
        assert frozen > 10_000 and raised  # the modules, routes and app of a started gateway
    else:
        assert frozen == 0 and not raised
