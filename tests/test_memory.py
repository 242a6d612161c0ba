"""Memory per connection stays bounded however big the log and however slow the client (PROTOCOL §4)."""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

import anyio
import httpx
import orjson
import pytest
import websockets

from tests.conftest import TLS, GatewayProcess, spawn_gateway
from tests.stalled import stalled_client

pytestmark = [pytest.mark.anyio, pytest.mark.server]

LOG_MB = 200
STALLED = 20


def write_big_log(state: Path) -> tuple[int, int]:
    """A ~200 MB log of realistic-size events, written directly as an existing volume would hold it."""
    session = state / "sessions" / "big"
    session.mkdir(parents=True)
    (session / "meta.json").write_bytes(orjson.dumps({"project": "p", "epoch": "bigbig1"}))
    block = b"".join(
        orjson.dumps({"type": "TEXT_MESSAGE_CONTENT", "messageId": f"m{i // 50}", "delta": "word " * (i % 60)}) + b"\n"
        for i in range(2000)
    )
    repeats = LOG_MB * 1_000_000 // len(block)
    with open(session / "agui-events.jsonl", "wb") as fh:
        for _ in range(repeats):
            fh.write(block)
    return repeats * 2000, repeats * len(block)


async def bytes_sent(http: httpx.AsyncClient, gp: GatewayProcess) -> float:
    text = (await http.get(gp.base + "/metrics")).text
    match = re.search(r'^gateway_bytes_sent_total\{transport="websocket"\} (\S+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


async def test_stalled_clients_on_a_200mb_log_keep_memory_bounded(tmp_path: Path) -> None:
    events, size = write_big_log(tmp_path / "state")
    async with (spawn_gateway(tmp_path / "state", GATEWAY_SEND_TIMEOUT="600") as gp,
                httpx.AsyncClient(verify=TLS) as http):
        status = (await http.get(gp.base + "/v1/projects/p/sessions/big", timeout=120)).json()
        assert (status["events"], status["bytes"]) == (events, size)  # first open classified the whole log
        baseline = gp.rss_kib()

        socks = [await stalled_client(gp.events_url("big", ws=True)) for _ in range(STALLED)]
        try:
            # Wait until every stream is blocked on its client: the byte counter stops moving.
            with anyio.fail_after(120):  # guards against a hang only
                previous = -1.0
                while (current := await bytes_sent(http, gp)) != previous or current == 0:
                    previous = current
                    await anyio.sleep(1.0)
            stalled_rss = gp.rss_kib()
            # What a stalled client pins: the kernel send buffer (bounded by the gateway) plus one frame.
            assert current / STALLED < 2_000_000, f"{current / STALLED:.0f} bytes in flight per stalled client"
            growth_mib = (stalled_rss - baseline) / 1024
            print(f"baseline {baseline / 1024:.1f} MiB, with {STALLED} stalled clients {stalled_rss / 1024:.1f} MiB, "
                  f"{current / 1e6:.0f} MB sent")
            assert growth_mib < 64, f"{STALLED} stalled clients grew the server by {growth_mib:.1f} MiB"

            # A client that reads still gets everything, in order, while the others stay stalled.
            got = last = 0
            url = gp.events_url("big", ws=True) + "?follow=0"
            async with websockets.connect(url, compression=None, max_size=None) as ws:
                async for frame in ws:
                    assert isinstance(frame, str)
                    for line in frame.split("\n"):
                        if line.startswith('{"first":'):
                            head = orjson.loads(line[: line.index(',"cursor"')] + "}")
                            assert head["first"] == last + 1
                            got += head["last"] - head["first"] + 1
                            last = head["last"]
            assert (got, last) == (events, events)
            assert ws.close_code == 1000
            assert (gp.rss_kib() - baseline) / 1024 < 64
        finally:
            for sock in socks:
                with contextlib.suppress(OSError):
                    sock.close()
