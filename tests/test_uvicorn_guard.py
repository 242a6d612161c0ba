"""gateway/transports/uvicorn_ws.py subclasses uvicorn internals: fail loudly when they move.

Without the `gateway.transport` scope extension, the WebSocket endpoint silently falls back to
`send_text` (a decode per frame) and cannot abort a stalled peer; these tests make that a failure.
"""

from __future__ import annotations

import re
import tomllib
from importlib.metadata import version
from pathlib import Path

import orjson
import pytest
import websockets
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket

from tests.conftest import RunningGateway

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


@pytest.mark.unit
def test_uvicorn_is_the_pinned_version() -> None:
    deps = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    pins = [m.group(1) for dep in deps if (m := re.fullmatch(r"uvicorn==(\S+)", dep))]
    assert pins, "uvicorn must stay pinned (==) in pyproject.toml"
    assert version("uvicorn") == pins[0], "uvicorn_ws.py was written against the pinned uvicorn: re-check it"


async def _probe(ws: WebSocket) -> None:
    await ws.accept()
    transport = ws.scope.get("extensions", {}).get("gateway.transport", {})
    await ws.send_text(orjson.dumps(sorted(transport)).decode())
    await ws.close()


@pytest.mark.server
@pytest.mark.anyio
async def test_the_served_websocket_scope_carries_the_transport_extension(gw: RunningGateway) -> None:
    gw.server.config.app.router.routes.insert(0, WebSocketRoute("/probe", _probe))
    async with websockets.connect(f"{gw.ws_base}/probe") as ws:
        assert orjson.loads(await ws.recv()) == ["abort", "on_text", "send_text", "send_text_now", "shared_writer"]
