"""Soak: writers, followers that resume or drop, stalled readers, DELETEs and large events at once.

`SOAK_SECONDS` sets the duration (60 in the suite; `make soak` runs 600). At the end: every
follower saw each session's sequence without a gap or a duplicate, the logs hold every
acknowledged event, descriptors, streams and tasks are back at their baseline, RSS grew within
`RSS_MARGIN_KIB` and levelled off (the second half of the run added less than `RSS_LEVEL_KIB`),
and the server logged no ERROR. A summary line (`soak: ...`) gives the numbers (`-s` shows it).
"""

from __future__ import annotations

import os
import random
import socket
import time
from pathlib import Path

import anyio
import httpx
import orjson
import pytest
import websockets
from prometheus_client.parser import text_string_to_metric_families
from websockets.exceptions import ConnectionClosed

from tests.conftest import TLS, GatewayProcess, spawn_gateway
from tests.stalled import stalled_client
from tests.streamclient import Seen

pytestmark = [pytest.mark.anyio, pytest.mark.server, pytest.mark.slow]

SECONDS = float(os.environ.get("SOAK_SECONDS", "60"))
SESSIONS = ("s0", "s1", "s2")
RSS_MARGIN_KIB = 64 * 1024
RSS_LEVEL_KIB = 16 * 1024
BIG = "x" * 300_000


def fds(gp: GatewayProcess) -> int:
    return len(os.listdir(f"/proc/{gp.proc.pid}/fd"))


async def tasks(http: httpx.AsyncClient, gp: GatewayProcess) -> int:
    text = (await http.get(gp.base + "/metrics")).text
    return next(int(s.value) for f in text_string_to_metric_families(text) for s in f.samples
                if s.name == "gateway_tasks")


async def sample_rss(gp: GatewayProcess, until: float, samples: list[int]) -> None:
    while time.monotonic() < until:
        await anyio.sleep(SECONDS / 10)
        samples.append(gp.rss_kib())


async def writer(gp: GatewayProcess, session: str, acked: list[int], until: float) -> None:
    n = 0
    async with httpx.AsyncClient(verify=TLS, timeout=30) as http:
        while time.monotonic() < until:
            batch = [{"type": "X", "n": n + i, **({"pad": BIG} if (n + i) % 97 == 0 else {})} for i in range(20)]
            resp = await http.post(gp.events_url(session), json=batch)
            assert resp.status_code == 201, resp.text
            acked.extend(range(n, n + 20))
            n += 20
            await anyio.sleep(0.01)


async def follower(gp: GatewayProcess, until: float, rng: random.Random, problems: list[str],
                   delivered: list[int], connects: list[int]) -> None:
    """Follow a session for a while, then leave (close or drop the socket) and resume from the cursor."""
    session = rng.choice(SESSIONS)
    seen = Seen()
    while time.monotonic() < until:
        url = gp.events_url(session, ws=True) + (f"?after={seen.cursor}" if seen.cursor else "")
        stay = rng.uniform(0.2, 2.0)
        connects.append(1)
        try:
            async with websockets.connect(url, compression=None, max_size=None) as ws:
                with anyio.move_on_after(stay):
                    async for frame in ws:
                        seen.take_frame(frame)
                if rng.random() < 0.3:
                    ws.transport.abort()  # drop abruptly, no close handshake
        except (ConnectionClosed, OSError):
            pass
    delivered.append(len(seen.seqs))
    if seen.seqs != list(range(1, len(seen.seqs) + 1)):
        problems.append(f"{session}: gap or duplicate in {len(seen.seqs)} seqs")


async def staller(gp: GatewayProcess, until: float) -> None:
    while time.monotonic() < until:
        sock: socket.socket = await stalled_client(gp.events_url("s0", ws=True))
        await anyio.sleep(3)
        sock.close()


async def deleter(gp: GatewayProcess, until: float) -> None:
    async with httpx.AsyncClient(verify=TLS, timeout=30) as http:
        while time.monotonic() < until:
            await http.post(gp.events_url("d"), json=[{"type": "X", "pad": BIG}])
            assert (await http.delete(gp.events_url("d"))).status_code in (200, 204)
            await anyio.sleep(0.2)


async def test_soak(tmp_path: Path) -> None:
    async with spawn_gateway(tmp_path / "state", GATEWAY_SEND_TIMEOUT="2", GATEWAY_LOG_LEVEL="warning") as gp, \
            httpx.AsyncClient(verify=TLS, timeout=30) as http:
        for session in (*SESSIONS, "d"):
            await http.post(gp.events_url(session), json=[{"type": "X", "n": -1}])
        base_fds, base_rss, base_tasks = fds(gp), gp.rss_kib(), await tasks(http, gp)
        acked: dict[str, list[int]] = {s: [] for s in SESSIONS}
        problems: list[str] = []
        delivered: list[int] = []
        connects: list[int] = []
        rss = [base_rss]
        rng = random.Random(1)
        until = time.monotonic() + SECONDS
        async with anyio.create_task_group() as tg:
            for session in SESSIONS:
                tg.start_soon(writer, gp, session, acked[session], until)
            for _ in range(12):
                tg.start_soon(follower, gp, until, random.Random(rng.random()), problems, delivered, connects)
            tg.start_soon(staller, gp, until)
            tg.start_soon(deleter, gp, until)
            tg.start_soon(sample_rss, gp, until, rss)
        assert not problems, problems
        assert len(delivered) == 12 and min(delivered) > 0, delivered
        with anyio.fail_after(30):  # streams close, stalled ones are cut, descriptors return
            while True:
                status = [(await http.get(gp.base + f"/v1/projects/p/sessions/{s}")).json() for s in SESSIONS]
                if all(st["connections"] == 0 for st in status) and fds(gp) <= base_fds + 2 \
                        and await tasks(http, gp) <= base_tasks:
                    break
                await anyio.sleep(0.2)
        for session in SESSIONS:
            lines = (gp.state_dir / "sessions" / session / "agui-events.jsonl").read_bytes().splitlines()
            stored = {orjson.loads(line).get("n") for line in lines}
            assert set(acked[session]) <= stored, f"{session}: acknowledged events missing from the log"
        rss.append(gp.rss_kib())
        end_fds, end_tasks = fds(gp), await tasks(http, gp)
    log = gp.log_path.read_text()
    errors = log.count(" ERROR ") + log.count('"level": "error"')
    middle = rss[len(rss) // 2]
    print(f"soak: {SECONDS:g} s, {sum(delivered)} events delivered over {len(connects)} follower connections "
          f"(12 followers), {len(problems)} with a gap or duplicate; {sum(map(len, acked.values()))} events "
          f"acknowledged, all in the logs; RSS MiB start {base_rss / 1024:.1f} middle {middle / 1024:.1f} "
          f"end {rss[-1] / 1024:.1f} (samples {[round(r / 1024, 1) for r in rss]}); descriptors {base_fds} -> "
          f"{end_fds}, tasks {base_tasks} -> {end_tasks}; ERROR lines {errors}")
    assert rss[-1] - base_rss < RSS_MARGIN_KIB, f"RSS grew {rss[-1] - base_rss} KiB"
    assert rss[-1] - middle < RSS_LEVEL_KIB, f"RSS still growing: {rss}"
    assert errors == 0, log[-2000:]
