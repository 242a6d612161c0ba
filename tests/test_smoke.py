import orjson
import pytest
import websockets

from tests.conftest import RunningGateway

pytestmark = [pytest.mark.anyio, pytest.mark.server]


async def test_append_then_replay_over_websocket(gw: RunningGateway) -> None:
    result = await gw.append("s1", [{"type": "RUN_STARTED", "n": i} for i in range(5)])
    assert result["count"] == 5
    async with websockets.connect(gw.events_url("s1", ws=True) + "?follow=0", compression=None) as ws:
        frames = [orjson.loads(line) for m in [m async for m in ws] for line in str(m).split("\n")]
    assert frames[0]["control"] == "hello"
    events = [e for f in frames[1:] for e in f["events"]]
    assert [e["n"] for e in events] == list(range(5))
    assert ws.close_code == 1000
