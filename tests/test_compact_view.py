"""`view=compact` on the events routes, end to end over a real gateway.

Resuming from every cursor of a small session, in both views, continues exactly after it: the
compact stream applied by `@ag-ui/client` on top of the raw events up to the cursor gives the
session's messages and state. Also: the WebSocket and SSE framing, live events after the compact
part, DELETE, the gateway-wide default, the compatibility route and the sidecar's bad days.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ag_ui_validate
import anyio
import orjson
import pytest
import websockets

from gateway.client import Event, GatewayClient
from gateway.store.layout import LOG_NAME
from gateway.stream.copied_sidecar import SCRATCH_PREFIX
from gateway.stream.sidecar import SIDECAR_NAME
from tests.conftest import RunningGateway, node, run_gateway
from tests.natsserver import NatsServer
from tests.test_sidecar import run

pytestmark = pytest.mark.anyio  # and per test: external (node) or server
ND = {"accept": "application/x-ndjson"}


def session_lines() -> list[bytes]:
    """Two finished runs (one with state), then a run still going, cut in a message."""
    state = [b'{"type":"STATE_SNAPSHOT","snapshot":{"n":0,"l":[]}}',
             b'{"type":"STATE_DELTA","delta":[{"op":"replace","path":"/n","value":1}]}',
             b'{"type":"STATE_DELTA","delta":[{"op":"add","path":"/l/-","value":"x"}]}']
    first = run(0, messages=2, words=15)
    return first[:-1] + state + first[-1:] + run(1, messages=1, words=10) + run(2, messages=1, words=8,
                                                                                finished=False)[:-3]


async def post_lines(gw: RunningGateway, session: str, lines: list[bytes]) -> None:
    resp = await gw.http.post(gw.events_url(session), content=b"\n".join(lines),
                              headers={"content-type": "application/x-ndjson"})
    assert resp.status_code == 201, resp.text


async def nd(gw: RunningGateway, session: str, query: str = "") -> list[dict[str, Any]]:
    resp = await gw.http.get(gw.events_url(session) + query, headers=ND)
    assert resp.status_code == 200, resp.text
    return [orjson.loads(line) for line in resp.content.splitlines()]


def seqs_of(items: list[dict[str, Any]]) -> list[int]:
    return [i["seq"] for i in items if "event" in i]


@pytest.mark.external
async def test_resume_from_every_cursor_in_both_views(gw: RunningGateway, node_modules: Path) -> None:
    lines = session_lines()
    await post_lines(gw, "s", lines)
    raw = [orjson.loads(x) for x in lines]
    n = len(raw)
    epoch = (await nd(gw, "s"))[0]["cursor"].split("-")[0]
    full = await nd(gw, "s", "?view=compact")
    assert [i["cursor"] for i in full] == [f"{epoch}-{i['seq']}" for i in full]
    compact_seqs = seqs_of(full)
    assert len(compact_seqs) < n // 2 and compact_seqs[-1] == n
    run_end = max(i for i, e in enumerate(raw, 1) if e["type"] == "RUN_FINISHED")
    assert [i["event"] for i in full if i["seq"] > run_end] == raw[run_end:]  # the unfinished run is raw
    assert [s for s in compact_seqs if s > run_end] == list(range(run_end + 1, n + 1))

    sequences: list[list[Any]] = [raw]
    for c in range(n + 1):
        query = f"&after={epoch}-{c}" if c else ""
        got_raw = await nd(gw, "s", "?view=raw" + query)
        assert seqs_of(got_raw) == list(range(c + 1, n + 1))
        assert [i["event"] for i in got_raw] == raw[c:]
        got = await nd(gw, "s", "?view=compact" + query)
        seqs = seqs_of(got)
        assert seqs == sorted(set(seqs)) and all(s > c for s in seqs) and (not seqs or seqs[-1] == n), (c, seqs)
        if c in compact_seqs or c == 0:
            assert seqs == [s for s in compact_seqs if s > c]
        sequences.append(raw[:c] + [i["event"] for i in got])
    for tail in (0, 3, n // 2):  # tail=N starts where after=<seq n-N> does
        after = await nd(gw, "s", f"?view=compact&after={epoch}-{n - tail}")
        assert seqs_of(await nd(gw, "s", f"?view=compact&tail={tail}")) == seqs_of(after)
    for tail in (n, n + 5):
        assert seqs_of(await nd(gw, "s", f"?view=compact&tail={tail}")) == compact_seqs
    results = await node(node_modules, "apply_events.cjs", stdin=orjson.dumps({"sequences": sequences}))
    whole = (results[0]["messages"], results[0]["state"])
    assert whole[1] == {"n": 1, "l": ["x"]}
    for c, result in enumerate(results[1:]):
        assert (result["messages"], result["state"]) == whole, c


def parse_frames(frames: list[str]) -> tuple[list[tuple[int, dict[str, Any]]], list[dict[str, Any]]]:
    """(seq, event) pairs and controls of WebSocket frames, checking the compact batch format."""
    events: list[tuple[int, dict[str, Any]]] = []
    controls: list[dict[str, Any]] = []
    for frame in frames:
        for line in frame.split("\n"):
            obj = orjson.loads(line)
            if "events" not in obj:
                controls.append(obj)
                continue
            assert line.startswith('{"first":%d,"last":%d,' % (obj["first"], obj["last"]))
            assert obj["cursor"].endswith(f"-{obj['last']}")
            seqs = obj.get("seqs", list(range(obj["first"], obj["last"] + 1)))
            assert len(seqs) == len(obj["events"]) and seqs[-1] == obj["last"] and seqs[0] >= obj["first"]
            events += zip(seqs, obj["events"], strict=True)
    return events, controls


@pytest.mark.server
async def test_websocket_compact_then_raw_then_live(gw: RunningGateway) -> None:
    lines = session_lines()
    await post_lines(gw, "s", lines)
    url = gw.events_url("s", ws=True) + "?view=compact"
    frames: list[str] = []
    async with websockets.connect(url, compression=None, max_size=None) as ws:
        with anyio.fail_after(10):
            while '"control":"live"' not in (frame := str(await ws.recv())):
                frames.append(frame)
            frames.append(frame)
            await post_lines(gw, "s", [b'{"type":"CUSTOM","name":"late","value":1}'])
            frames.append(str(await ws.recv()))
    events, controls = parse_frames(frames)
    assert controls[0]["control"] == "hello" and controls[1]["control"] == "live"
    assert controls[1]["cursor"].endswith(f"-{len(lines)}")
    assert events[-1] == (len(lines) + 1, {"type": "CUSTOM", "name": "late", "value": 1})
    assert len(events) < len(lines) // 2
    assert any(e["type"] == "STATE_SNAPSHOT" and e["snapshot"] == {"n": 1, "l": ["x"]} for _, e in events)


@pytest.mark.server
async def test_delete_resets_a_compact_follower(gw: RunningGateway) -> None:
    await post_lines(gw, "s", session_lines())
    url = gw.events_url("s", ws=True) + "?view=compact"
    frames: list[str] = []
    async with websockets.connect(url, compression=None, max_size=None) as ws:
        with anyio.fail_after(10):
            while '"control":"live"' not in str(await ws.recv()):
                pass
            assert (await gw.http.delete(gw.events_url("s"))).status_code == 200
            frames.append(str(await ws.recv()))
            await post_lines(gw, "s", run(7, messages=1, words=2))
            while len(parse_frames(frames)[0]) < len(run(7, messages=1, words=2)):
                frames.append(str(await ws.recv()))
    events, controls = parse_frames(frames)
    assert controls[0]["control"] == "reset"
    assert all(orjson.loads(line)["cursor"].startswith(controls[0]["epoch"] + "-")
               for f in frames[1:] for line in f.split("\n"))
    assert [s for s, _ in events] == list(range(1, len(run(7, messages=1, words=2)) + 1))
    resumed = await nd(gw, "s", f"?view=compact&after={controls[0]['epoch']}-{len(events)}")
    assert seqs_of(resumed) == []


@pytest.mark.server
async def test_compact_sse_passes_ag_ui_validate(gw: RunningGateway, tmp_path: Path) -> None:
    """On finished runs of this session and on the validator's own valid fixtures."""
    finished = session_lines()[: -len(run(2, messages=1, words=8, finished=False)[:-3])]
    fixtures = sorted((Path(ag_ui_validate.__file__).parent / "spec" / "fixtures" / "valid").glob("*.jsonl"))
    validator = str(Path(sys.executable).with_name("ag-ui-validate"))
    merged = 0
    for i, lines in enumerate([finished, *(f.read_bytes().splitlines() for f in fixtures)]):
        await post_lines(gw, f"v{i}", lines)
        resp = await gw.http.get(gw.events_url(f"v{i}") + "?view=compact&follow=0",
                                 headers={"accept": "text/event-stream"})
        body = resp.content
        ids = [line[4:] for line in body.decode().splitlines() if line.startswith("id: ")]
        assert len(ids) == body.count(b"\ndata: ") <= len(lines)
        merged += len(lines) - len(ids)
        path = tmp_path / f"compact-{i}.sse"
        path.write_bytes(body)
        result = await anyio.run_process([validator, "--no-color", str(path)], check=False)
        assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
    assert merged > len(finished) // 2


@pytest.mark.server
async def test_default_view_and_compat_route(gateway_factory: Callable[..., Any]) -> None:
    async with gateway_factory(default_view="compact") as gw:
        await post_lines(gw, "s", session_lines())
        n = len(session_lines())
        assert len(await nd(gw, "s")) < n // 2
        assert seqs_of(await nd(gw, "s", "?view=raw")) == list(range(1, n + 1))
        compat = f"{gw.base}/api/projects/p/agentic-sessions/s/agui/events"
        for query, compact in (("?follow=0", True), ("?follow=0&view=raw", False)):
            resp = await gw.http.get(compat + query)
            assert (resp.content.count(b"\ndata: ") < n // 2) is compact
        resp = await gw.http.get(gw.events_url("s") + "?view=tiny", headers=ND)
        assert resp.status_code == 400 and "view" in resp.text


@pytest.mark.server
async def test_sidecar_damage_is_invisible_to_clients(gw: RunningGateway) -> None:
    lines = [x for r in range(40) for x in run(r, messages=3, words=200)]
    await post_lines(gw, "s", lines)
    good = await nd(gw, "s", "?view=compact")
    sidecar = gw.settings.state_dir / "sessions" / "s" / SIDECAR_NAME
    whole = sidecar.read_bytes()
    assert whole.count(b"\nE ") > 1
    for damage in (lambda: sidecar.unlink(), lambda: sidecar.write_bytes(whole[: len(whole) // 2]),
                   lambda: sidecar.write_bytes(whole[:-7])):
        damage()
        assert await nd(gw, "s", "?view=compact") == good
        assert sidecar.read_bytes() == whole
    # damaged after it was checked, while a stream reads it: that stream compacts from the log
    data = bytearray(whole)
    rec = data.index(b"\nE ", data.index(b"\nE ") + 1) - 10
    data[rec] = ord("\n")
    sidecar.write_bytes(bytes(data))
    assert await nd(gw, "s", "?view=compact") == good
    # stale: a run appended and finished; then a new epoch
    more = run(20, messages=1, words=3)
    await post_lines(gw, "s", more)
    after = await nd(gw, "s", "?view=compact")
    assert after[: len(good)] == good and seqs_of(after)[-1] == len(lines) + len(more)
    assert after[-1]["event"]["type"] == "RUN_FINISHED" and len(after) < len(good) + len(more)
    assert (await gw.http.delete(gw.events_url("s"))).status_code == 200
    await post_lines(gw, "s", more)
    fresh = await nd(gw, "s", "?view=compact")
    assert seqs_of(fresh)[-1] == len(more) and fresh[0]["cursor"] != good[0]["cursor"]
    assert (gw.settings.state_dir / "sessions" / "s" / LOG_NAME).stat().st_size > 0


@pytest.mark.server
@pytest.mark.parametrize("transport", ["websocket", "sse"])
async def test_python_client_and_cli_take_a_view(gw: RunningGateway, transport: Any) -> None:
    lines = session_lines()
    await post_lines(gw, "s", lines)
    expected = await nd(gw, "s", "?view=compact")
    async with GatewayClient(gw.base, "p") as client:
        stream = client.events("s", follow=False, transport=transport, view="compact")
        got = [item async for item in stream if isinstance(item, Event)]
        assert [(e.seq, e.data) for e in got] == [(i["seq"], i["event"]) for i in expected]
        middle = got[len(got) // 2].cursor
        rest = [item async for item in client.events("s", after=middle, follow=False, transport=transport,
                                                     view="compact") if isinstance(item, Event)]
        assert [e.seq for e in rest] == [e.seq for e in got[len(got) // 2 + 1 :]]
    script = str(Path(sys.executable).with_name("agui-gateway"))
    url = f"{gw.base}/v1/projects/p/sessions/s"
    done = await anyio.run_process([script, "replay", url, "--view", "compact"], check=False)
    assert done.returncode == 0, done.stderr
    assert [orjson.loads(x) for x in done.stdout.splitlines()] == [i["event"] for i in expected]


@pytest.mark.server
async def test_empty_and_read_only_sessions_are_served_raw(gateway_factory: Callable[..., Any]) -> None:
    async with gateway_factory(compact_share=0) as gw:  # no background build making the sidecar meanwhile
        await empty_and_read_only(gw)


async def empty_and_read_only(gw: RunningGateway) -> None:
    await post_lines(gw, "s", session_lines())
    assert (await gw.http.delete(gw.events_url("s"))).status_code == 200
    assert await nd(gw, "s", "?view=compact") == []  # no log file at all
    await post_lines(gw, "s", session_lines())
    sidecar = gw.settings.state_dir / "sessions" / "s" / SIDECAR_NAME
    sidecar.unlink(missing_ok=True)
    sidecar.mkdir()  # cannot be opened as a file (as on a read-only volume): the stream is raw, not an error
    assert seqs_of(await nd(gw, "s", "?view=compact")) == list(range(1, len(session_lines()) + 1))


@pytest.mark.server
async def test_the_nats_store_serves_the_same_compact_view_as_files(
        gw: RunningGateway, tmp_path: Path, nats: NatsServer) -> None:
    lines = [x for r in range(12) for x in run(r, messages=3, words=200)] + session_lines()
    async with run_gateway(tmp_path / "nats-state", **nats.settings()) as ngw:
        for g in (gw, ngw):
            await post_lines(g, "s", lines)

        async def pairs(g: RunningGateway, query: str = "") -> list[tuple[int, Any]]:
            return [(i["seq"], i["event"]) for i in await nd(g, "s", "?view=compact" + query) if "event" in i]

        files = await pairs(gw)
        epochs = [(await nd(g, "s"))[0]["cursor"].split("-")[0] for g in (gw, ngw)]
        assert await pairs(ngw) == files and len(files) < len(lines) // 3
        for c in range(1, len(lines), 61):  # resumes inside records, compacted on the spot
            assert await pairs(ngw, f"&after={epochs[1]}-{c}") == await pairs(gw, f"&after={epochs[0]}-{c}"), c
        more = run(20, messages=1, words=3)
        for g in (gw, ngw):
            await post_lines(g, "s", more)
        assert await pairs(ngw) == await pairs(gw)  # the sidecar extended with the new finished run
        assert (await ngw.http.delete(ngw.events_url("s"))).status_code == 200
        await post_lines(ngw, "s", more)
        assert [s for s, _ in await pairs(ngw)][-1] == len(more)
        with anyio.fail_after(30):  # the background build of the appended runs may still be going
            while True:
                side = [p.name for p in (tmp_path / "nats-state").rglob("*") if p.is_file()]
                if SIDECAR_NAME in side and not [n for n in side if n.startswith(SCRATCH_PREFIX)]:
                    break
                await anyio.sleep(0.02)
