"""WebSocket stream (PROTOCOL §4) through a real uvicorn server and the real websockets client."""

from __future__ import annotations

import contextlib
import random
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from gateway.store.layout import LOG_NAME
from tests.conftest import RunningGateway, run_gateway
from tests.events import evs
from tests.streamclient import Seen, sse_read, ws_read_all

FSYNC_MODES = ("never", "always")  # the stream and append paths under both settings
STORES = ("files", "nats")  # every guarantee checked on both stores
pytestmark = [pytest.mark.anyio, pytest.mark.server]



async def test_hello_then_every_event_then_close_1000(gw: RunningGateway) -> None:
    await gw.append("s", evs(0, 10))
    seen, code, reason = await ws_read_all(gw.events_url("s", ws=True) + "?follow=0")
    hello = seen.controls[0]
    assert hello["control"] == "hello" and hello["session"] == "s" and hello["reset"] is False
    assert hello["head"] == f"{hello['epoch']}-10"
    assert seen.frames[0].split("\n")[0].startswith('{"control":"hello"')
    assert [e["n"] for e in seen.events] == list(range(10)) and seen.seqs == list(range(1, 11))
    assert code == 1000 and f"{hello['epoch']}-10" in reason
    assert seen.control("live") == []


async def test_resume_middle_other_epoch_past_end_and_tail(gw: RunningGateway) -> None:
    first = await gw.append("s", evs(0, 30))
    epoch = first["first"].split("-")[0]
    url = gw.events_url("s", ws=True) + "?follow=0"
    seen, *_ = await ws_read_all(url + f"&after={epoch}-12")
    assert seen.controls[0]["reset"] is False and seen.seqs == list(range(13, 31))
    for cursor in ("zzzzzz9-12", f"{epoch}-31", f"{epoch}-999999"):
        seen, *_ = await ws_read_all(url + f"&after={cursor}")
        assert seen.controls[0]["reset"] is True and seen.seqs == list(range(1, 31)), cursor
    seen, *_ = await ws_read_all(url + f"&after={epoch}-30")
    assert seen.controls[0]["reset"] is False and seen.seqs == []
    seen, *_ = await ws_read_all(url + "&tail=5")
    assert seen.seqs == list(range(26, 31))
    seen, *_ = await ws_read_all(url + "&tail=0")
    assert seen.seqs == []
    seen, *_ = await ws_read_all(url + "&tail=500")
    assert seen.seqs == list(range(1, 31))


@pytest.mark.parametrize("query,code,words", [
    ("after=nope", 4400, "malformed cursor"),
    ("tail=-1", 4400, "tail"),
    ("follow=maybe", 4400, "follow"),
    ("subscribe=no", 4400, "subscribe"),
])
async def test_bad_requests_close_with_4400_and_a_reason(gw: RunningGateway, query: str, code: int,
                                                          words: str) -> None:
    await gw.append("s", evs(0, 1))
    seen, got, reason = await ws_read_all(gw.events_url("s", ws=True) + "?" + query)
    assert (got, seen.frames) == (code, []) and words in reason


async def test_bad_name_unknown_session_and_project_mismatch(gw: RunningGateway) -> None:
    await gw.append("s", evs(0, 1))
    _, code, reason = await ws_read_all(gw.events_url("Bad_Name", ws=True))
    assert code == 4400 and "DNS-1123" in reason
    _, code, reason = await ws_read_all(gw.events_url("missing", ws=True))
    assert code == 4404 and "missing" in reason
    _, code, reason = await ws_read_all(gw.events_url("s", project="other", ws=True))
    assert code == 4409 and "belongs to project" in reason
    assert not (gw.settings.state_dir / "sessions" / "missing").exists()


async def test_live_events_follow_the_replay_without_gap(gw: RunningGateway) -> None:
    await gw.append("s", evs(0, 5))
    seen = Seen()
    async with websockets.connect(gw.events_url("s", ws=True), compression=None) as ws:
        while not seen.control("live"):
            seen.take_frame(await ws.recv())
        assert seen.control("live")[0]["cursor"] == seen.cursor
        await gw.append("s", evs(5, 1))
        await gw.append("s", evs(6, 3))
        while len(seen.events) < 9:
            seen.take_frame(await ws.recv())
    assert [e["n"] for e in seen.events] == list(range(9)) and seen.seqs == list(range(1, 10))


async def test_waits_for_first_event_of_a_session_without_log(gw: RunningGateway) -> None:
    await gw.append("s", evs(0, 1))
    async with gw.http.stream("DELETE", gw.events_url("s")) as resp:
        assert resp.status_code == 200
    seen = Seen()
    async with websockets.connect(gw.events_url("s", ws=True), compression=None) as ws:
        seen.take_frame(await ws.recv())
        assert seen.controls[0]["head"] is None
        seen.take_frame(await ws.recv())
        assert seen.control("live")[0]["cursor"] is None
        await gw.append("s", evs(1, 1))
        seen.take_frame(await ws.recv())
    assert seen.seqs == [1] and seen.events[0]["n"] == 1


async def test_skipped_lines_become_controls_and_the_stream_goes_on(tmp_path: Path) -> None:
    session = tmp_path / "state" / "sessions" / "s"
    session.mkdir(parents=True)
    (session / "meta.json").write_text('{"project": "p", "epoch": "abcdef1"}')
    big = orjson.dumps({"type": "X", "pad": "x" * 4000})
    lines = [orjson.dumps({"type": "X", "n": 1}), b"{broken", big, orjson.dumps({"type": "X", "n": 4})]
    (session / LOG_NAME).write_bytes(b"\n".join(lines) + b"\n" + b'{"type":"X","n":5')  # torn tail
    async with run_gateway(tmp_path / "state", max_event_bytes=1024) as gw:
        seen, code, _ = await ws_read_all(gw.events_url("s", ws=True) + "?follow=0")
        assert seen.seqs == [1, 2, 3, 4] and [e["n"] for e in seen.events] == [1, 4]
        assert [(c["seq"], c["reason"], c["bytes"], c["cursor"]) for c in seen.control("skipped")] == [
            (2, "corrupt", 7, "abcdef1-2"), (3, "oversize", len(big), "abcdef1-3")]
        assert code == 1000
        events, comments = await sse_read(gw.http, gw.events_url("s") + "?follow=0")
        assert [e["n"] for _, e in events] == [1, 4]
        assert "skipped seq=2 reason=corrupt bytes=7" in comments


async def test_frames_pack_waiting_events_up_to_the_frame_limit(tmp_path: Path) -> None:
    async with run_gateway(tmp_path / "state", frame_bytes=4096) as gw:
        await gw.append("s", evs(0, 2000))
        big = {"type": "X", "pad": "p" * 10000}
        await gw.append("s", [big, *evs(2000, 3)])
        seen, *_ = await ws_read_all(gw.events_url("s", ws=True) + "?follow=0")
    assert seen.seqs == list(range(1, 2005))
    sizes = [len(f.encode()) for f in seen.frames]
    big_frames = [f for f in seen.frames if '"pad"' in f]
    assert len(big_frames) == 1 and orjson.loads(big_frames[0])["first"] == 2001
    assert all(size <= 4096 for f, size in zip(seen.frames, sizes, strict=True) if f not in big_frames)
    assert len(seen.frames) < 2000 / 10  # packed, not one event per frame


async def test_heartbeat_ping_and_unknown_client_messages(tmp_path: Path) -> None:
    async with run_gateway(tmp_path / "state", heartbeat_interval=0.2) as gw:
        await gw.append("s", evs(0, 1))
        seen = Seen()
        async with websockets.connect(gw.events_url("s", ws=True), compression=None) as ws:
            while len(seen.control("heartbeat")) < 2:
                seen.take_frame(await ws.recv())
            await ws.send("hello there")
            await ws.send('{"control": "unknown"}')
            await ws.send('{"control": "ping"}')
            before = len(seen.control("heartbeat"))
            seen.take_frame(await ws.recv())
            assert len(seen.control("heartbeat")) == before + 1
            assert isinstance(seen.control("heartbeat")[-1]["ts"], int)
            await gw.append("s", evs(1, 1))
            while len(seen.events) < 2:
                seen.take_frame(await ws.recv())


async def test_oversized_client_message_closes_1009(gw: RunningGateway) -> None:
    await gw.append("s", evs(0, 1))
    async with websockets.connect(gw.events_url("s", ws=True), compression=None) as ws:
        await ws.send("x" * (256 * 1024))
        with pytest.raises(ConnectionClosed) as info:
            while True:
                await ws.recv()
    assert info.value.rcvd is not None and info.value.rcvd.code == 1009


async def test_delete_sends_reset_and_the_stream_continues_in_the_new_epoch(gw: RunningGateway) -> None:
    await gw.append("s", evs(0, 3))
    seen = Seen()
    async with websockets.connect(gw.events_url("s", ws=True), compression=None) as ws:
        while not seen.control("live"):
            seen.take_frame(await ws.recv())
        resp = await gw.http.delete(gw.events_url("s"))
        new_epoch = resp.json()["epoch"]
        while not seen.control("reset"):
            seen.take_frame(await ws.recv())
        assert seen.control("reset")[0]["epoch"] == new_epoch
        result = await gw.append("s", evs(100, 2))
        assert result["first"] == f"{new_epoch}-1"
        while len(seen.events) < 5:
            seen.take_frame(await ws.recv())
    assert [e["n"] for e in seen.events] == [0, 1, 2, 100, 101]
    assert seen.cursor == f"{new_epoch}-2"


@pytest.mark.files_only
async def test_appends_from_another_process_reach_live_readers(gw: RunningGateway) -> None:
    await gw.append("s", evs(0, 1))
    seen = Seen()
    log_path = gw.settings.state_dir / "sessions" / "s" / LOG_NAME
    async with websockets.connect(gw.events_url("s", ws=True), compression=None) as ws:
        while not seen.control("live"):
            seen.take_frame(await ws.recv())
        with open(log_path, "ab") as fh:  # as another writer on a shared volume would
            fh.write(orjson.dumps({"type": "X", "n": 1}) + b"\n")
            fh.write(b'{"type":"X","n":2')
            fh.flush()
            while len(seen.events) < 2:
                seen.take_frame(await ws.recv())
            fh.write(b"}\n")
        while len(seen.events) < 3:
            seen.take_frame(await ws.recv())
    assert [e["n"] for e in seen.events] == [0, 1, 2] and seen.seqs == [1, 2, 3]


# -- exactly once under concurrency ------------------------------------------------------------

TOTAL = 1500


async def _writer(gw: RunningGateway, rng: random.Random, done: anyio.Event) -> None:
    n = 1  # event 0 was appended before the readers started
    while n < TOTAL:
        count = min(TOTAL - n, rng.choice([1, 1, 2, 5, 20, 100]))
        await gw.append("race", evs(n, count, pad="x" * rng.randint(0, 300)))
        n += count
        if rng.random() < 0.5:
            await anyio.sleep(rng.random() * 0.004)
    done.set()


async def _ws_reader(gw: RunningGateway, rng: random.Random, done: anyio.Event) -> list[int]:
    seen = Seen()
    while not (done.is_set() and len(seen.events) == TOTAL):
        url = gw.events_url("race", ws=True) + (f"?after={seen.cursor}" if seen.cursor else "")
        try:
            async with websockets.connect(url, compression=None, max_size=None) as ws:
                hello = seen.take_frame(await ws.recv())[0]
                assert hello["control"] == "hello" and hello["reset"] is False
                for _ in range(rng.randint(1, 30)):
                    with anyio.move_on_after(0.5):
                        seen.take_frame(await ws.recv())
                    if done.is_set() and len(seen.events) == TOTAL:
                        break
                if rng.random() < 0.3:
                    ws.transport.abort()  # vanish without a close handshake
        except ConnectionClosed:
            pass
    assert seen.seqs == list(range(1, TOTAL + 1))
    return [e["n"] for e in seen.events]


async def _sse_reader(gw: RunningGateway, rng: random.Random, done: anyio.Event) -> list[int]:
    events: list[tuple[str, dict[str, Any]]] = []
    while not (done.is_set() and len(events) == TOTAL):
        headers = {"last-event-id": events[-1][0]} if events else {}
        with anyio.move_on_after(0.5):
            _, comments = await sse_read(gw.http, gw.events_url("race"), headers, rng.randint(1, 300), events)
            assert not any(c.startswith("reset") for c in comments)
    assert [int(ident.split("-")[1]) for ident, _ in events] == list(range(1, TOTAL + 1))
    return [event["n"] for _, event in events]


@pytest.mark.parametrize("seed", range(20))
async def test_every_event_exactly_once_across_drops_and_resumes(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    async with run_gateway(tmp_path / "state", frame_bytes=rng.choice([1024, 8192, 65536])) as gw:
        done = anyio.Event()
        results: list[list[int]] = []

        async def collect(reader: Any, sub_seed: int) -> None:
            results.append(await reader(gw, random.Random(sub_seed), done))

        await gw.append("race", evs(0, 1))
        async with anyio.create_task_group() as tg:
            tg.start_soon(_writer, gw, rng, done)
            for i in range(3):
                tg.start_soon(collect, _ws_reader, seed * 10 + i)
            tg.start_soon(collect, _sse_reader, seed * 10 + 9)
    assert len(results) == 4
    for got in results:
        assert got == list(range(TOTAL))  # each reader saw each event exactly once, in order


async def test_foreign_origins_are_refused_unless_allowed(tmp_path: Path) -> None:
    async with run_gateway(tmp_path / "state", allowed_origins=("https://ui.example",)) as gw:
        await gw.append("s", evs(0, 1))
        url = gw.events_url("s", ws=True) + "?follow=0"
        with pytest.raises(websockets.InvalidStatus) as refused:
            await ws_read_all(url, origin="https://evil.example")
        assert refused.value.response.status_code == 403 and b"evil.example" in refused.value.response.body
        seen, code, _ = await ws_read_all(url, origin="https://ui.example")
        assert code == 1000 and len(seen.events) == 1
        seen, code, _ = await ws_read_all(url, origin=f"http://127.0.0.1:{gw.settings.port}")  # same origin
        assert code == 1000
        preflight = await gw.http.options(gw.events_url("s"), headers={
            "origin": "https://ui.example", "access-control-request-method": "POST"})
        assert preflight.headers["access-control-allow-origin"] == "https://ui.example"
        resp = await gw.http.get(gw.events_url("s"), headers={"origin": "https://evil.example"})
        assert "access-control-allow-origin" not in resp.headers


async def test_an_internal_error_closes_1011_with_the_cursor(
    gw: RunningGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The failure is injected (no real fault makes the encoder raise), to check the close path."""
    from gateway.stream import framing

    await gw.append("s", evs(0, 3))

    def broken(self: object, epoch: str, items: list[object]) -> bytes:
        raise RuntimeError("encoder broke")

    monkeypatch.setattr(framing.WebSocketEncoder, "items", broken)
    seen, code, reason = await ws_read_all(gw.events_url("s", ws=True))
    assert code == 1011 and "internal error" in reason and seen.controls[0]["control"] == "hello"


@pytest.mark.parametrize("compression", [False, True])
async def test_permessage_deflate_only_when_configured(tmp_path: Path, compression: bool) -> None:
    async with run_gateway(tmp_path / "state", ws_compression=compression) as gw:
        await gw.append("s", evs(0, 50))
        async with websockets.connect(gw.events_url("s", ws=True) + "?follow=0") as ws:  # offers deflate
            negotiated = [type(ext).__name__ for ext in ws.protocol.extensions]
            seen = Seen()
            with contextlib.suppress(ConnectionClosed):
                async for frame in ws:
                    seen.take_frame(frame)
    assert negotiated == (["PerMessageDeflate"] if compression else [])
    assert [e["n"] for e in seen.events] == list(range(50))
