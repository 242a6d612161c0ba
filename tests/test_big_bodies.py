"""A 64 MiB NDJSON body of tiny events does not stall other clients nor blow up the server's memory.

Measured in a gateway process of its own (its RSS is the server's alone): a probe thread asks
`/healthz` in a loop and records the longest gap between answers (the server's loop lag as a
client sees it), a follower of another session takes events appended meanwhile. The checks are
counts (answers and events that came while the big body was being appended) and memory bounds;
the lag bound is loose (the stall it guards against was 7.3 s).
"""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import httpx
import orjson
import pytest
import websockets

from tests.conftest import TLS, GatewayProcess, spawn_gateway
from tests.events import evs

pytestmark = [pytest.mark.anyio, pytest.mark.server]

TINY = b'{"type":"x"}\n'
BODY = TINY * (64 * 1024 * 1024 // len(TINY))  # 5,162,220 events


class Probe:
    """Thread: /healthz answers, the longest gap between two, and the server's peak RSS."""

    def __init__(self, gw: GatewayProcess) -> None:
        self.gw, self.answers, self.max_gap, self.peak_kib = gw, 0, 0.0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="healthz-probe", daemon=True)

    def _run(self) -> None:
        with httpx.Client(verify=TLS, timeout=60) as http:
            last = time.monotonic()
            while not self._stop.is_set():
                assert http.get(f"{self.gw.base}/healthz").status_code == 200
                now = time.monotonic()
                self.answers, self.max_gap, last = self.answers + 1, max(self.max_gap, now - last), now
                self.peak_kib = max(self.peak_kib, self.gw.rss_kib())

    def __enter__(self) -> Probe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


async def chunks() -> AsyncIterator[bytes]:
    for i in range(0, len(BODY), 1 << 20):
        yield BODY[i : i + (1 << 20)]


@pytest.mark.parametrize(("query", "max_growth_mib"), [
    ("?stream=1", 64),  # one chunk and one line at a time, whatever the body's size
    ("", 512),  # all or nothing: the events are held until the one write (the issue measured 865 MB)
])
async def test_a_64_mib_body_of_tiny_events_leaves_others_served(tmp_path: Path, query: str,
                                                                 max_growth_mib: int) -> None:
    async with spawn_gateway(tmp_path / "state") as gw, httpx.AsyncClient(verify=TLS, timeout=600) as http:
        events_url = gw.events_url("big")
        assert (await http.post(gw.events_url("f"), json=evs(1, 1))).status_code == 201
        assert (await http.post(events_url, content=TINY * 100_000,
                                headers={"content-type": "application/x-ndjson"})).status_code == 201  # warm up
        base_kib = gw.rss_kib()
        done = anyio.Event()
        live: list[int] = []

        async def follow_and_write() -> None:
            """Append to session f and follow it until the big append is done."""
            async with websockets.connect(gw.events_url("f", ws=True)) as ws:
                n = 1
                while not done.is_set():
                    n += 1
                    assert (await http.post(gw.events_url("f"), json=evs(n, 1))).status_code == 201
                    while n not in live:
                        for line in str(await ws.recv()).split("\n"):
                            live.extend(e["n"] for e in orjson.loads(line).get("events", []))

        with Probe(gw) as probe:
            async with anyio.create_task_group() as tg:
                tg.start_soon(follow_and_write)
                resp = await http.post(events_url + query, content=chunks(),
                                       headers={"content-type": "application/x-ndjson"})
                answers, delivered = probe.answers, len(live)
                done.set()
        assert resp.status_code == 201, resp.text
        assert resp.json()["count"] == len(BODY) // len(TINY)
        growth_mib = (probe.peak_kib - base_kib) / 1024
        print(f"{query or 'plain'}: {answers} healthz answers, {delivered} live events, longest healthz gap "
              f"{probe.max_gap:.2f}s, peak RSS +{growth_mib:.0f} MiB")
        assert answers >= 20 and delivered >= 20, (answers, delivered)
        assert probe.max_gap < 5.0, f"the server did not answer for {probe.max_gap:.2f}s"
        assert growth_mib < max_growth_mib
