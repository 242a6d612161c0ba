"""Two gateway processes on one state dir (a shared volume): appends through both interleave safely.

Each append's answer must name the seqs its events really got, every event must be in the log
once, and a reader on either gateway must see the whole log in order.
"""

from __future__ import annotations

import random
from pathlib import Path

import anyio
import httpx
import orjson
import pytest
from websockets.asyncio.client import connect

from tests.conftest import TLS, GatewayProcess, spawn_gateway
from tests.streamclient import ws_read_all

pytestmark = [pytest.mark.anyio, pytest.mark.server]


async def test_two_gateways_appending_to_one_log(tmp_path: Path) -> None:
    state = tmp_path / "state"
    async with spawn_gateway(state) as a, spawn_gateway(state) as b, httpx.AsyncClient(verify=TLS, timeout=30) as http:
        first = await http.post(a.events_url("s"), json={"type": "X", "n": -1})
        assert first.status_code == 201
        answers: list[tuple[int, int, list[int]]] = []

        async def writer(url: str, base: int, seed: int) -> None:
            rng = random.Random(seed)
            for k in range(60):
                ns = [base + k * 10 + i for i in range(rng.choice([1, 1, 3, 7]))]
                resp = await http.post(url, json=[{"type": "X", "n": n} for n in ns])
                assert resp.status_code == 201, resp.text
                body = resp.json()
                answers.append((int(body["first"].split("-")[1]), int(body["last"].split("-")[1]), ns))

        async with anyio.create_task_group() as tg:
            for i, gw in enumerate((a, b, a, b)):
                tg.start_soon(writer, gw.events_url("s"), (i + 1) * 100_000, i)

        raw = (state / "sessions" / "s" / "agui-events.jsonl").read_bytes()
        logged = [orjson.loads(line)["n"] for line in raw.splitlines()]
        assert len(logged) == len(set(logged)) == 1 + sum(len(ns) for _, _, ns in answers)
        for first_seq, last_seq, ns in answers:
            assert logged[first_seq - 1:last_seq] == ns, "an append's answer names the seqs it really got"
        for gw in (a, b):
            seen, code, _ = await ws_read_all(gw.events_url("s", ws=True) + "?follow=0")
            assert code == 1000 and [e["n"] for e in seen.events] == logged
            assert seen.seqs == list(range(1, len(logged) + 1))


async def test_a_session_created_through_both_gateways_at_once(tmp_path: Path) -> None:
    """Both gateways take their first look at many new sessions at the same moment: every append
    succeeds in one epoch (the one meta.json names), each session has one whole meta.json and no
    temporary file is left behind."""
    state = tmp_path / "state"
    sessions = [f"s{i}" for i in range(40)]
    async with spawn_gateway(state) as a, spawn_gateway(state) as b, httpx.AsyncClient(verify=TLS, timeout=30) as http:
        statuses: list[tuple[int, str]] = []
        epochs: dict[str, set[str]] = {name: set() for name in sessions}

        async def append(gw: GatewayProcess, name: str) -> None:
            resp = await http.post(gw.events_url(name), json={"type": "X"})
            statuses.append((resp.status_code, resp.text))
            if resp.status_code == 201:
                epochs[name].add(resp.json()["first"].split("-")[0])

        async with anyio.create_task_group() as tg:
            for name in sessions:
                tg.start_soon(append, a, name)
                tg.start_soon(append, b, name)
    assert [s for s in statuses if s[0] != 201] == []
    for name in sessions:
        folder = state / "sessions" / name
        meta = orjson.loads((folder / "meta.json").read_bytes())
        assert meta["project"] == "p" and epochs[name] == {meta["epoch"]}, (name, epochs[name], meta)
        assert len((folder / "agui-events.jsonl").read_bytes().splitlines()) == 2
        assert not [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


async def test_a_delete_through_one_gateway_gives_every_gateway_the_same_new_epoch(tmp_path: Path) -> None:
    """The other gateway notices the deleted log by itself and adopts the epoch the DELETE wrote
    to meta.json, instead of starting one of its own: a cursor from either resumes on the other."""
    state = tmp_path / "state"
    async with spawn_gateway(state) as a, spawn_gateway(state) as b, httpx.AsyncClient(verify=TLS, timeout=30) as http:
        first = (await http.post(a.events_url("s"), json=[{"type": "X", "n": 1}, {"type": "X", "n": 2}])).json()
        old = first["first"].split("-")[0]
        async with connect(b.events_url("s", ws=True)) as follower:
            hello = orjson.loads(await follower.recv())
            assert hello["control"] == "hello" and hello["epoch"] == old
            deleted = (await http.delete(a.events_url("s"))).json()["epoch"]
            assert deleted != old
            with anyio.fail_after(20):
                while True:  # the follower on B sees the reset, to the epoch A started
                    lines = [orjson.loads(line) for line in str(await follower.recv()).split("\n")]
                    resets = [line for line in lines if line.get("control") == "reset"]
                    if resets:
                        assert resets[0]["epoch"] == deleted
                        break
        for gw, n in ((b, 3), (a, 4), (b, 5)):
            answer = (await http.post(gw.events_url("s"), json={"type": "X", "n": n})).json()
            assert answer["first"].split("-")[0] == deleted, answer
        for gw in (a, b):
            assert (await http.get(f"{gw.base}/v1/projects/p/sessions/s")).json()["epoch"] == deleted
        meta = orjson.loads((state / "sessions" / "s" / "meta.json").read_bytes())
        assert meta["epoch"] == deleted
