"""SSE (PROTOCOL §5) and NDJSON (§3) streams on a real server, checked on the raw bytes of the wire."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import ag_ui_validate
import anyio
import orjson
import pytest

from gateway.store.layout import LOG_NAME
from tests.conftest import RunningGateway, run_gateway, stored_bytes
from tests.events import evs

FSYNC_MODES = ("never", "always")  # the stream and append paths under both settings
STORES = ("files", "nats")  # every guarantee checked on both stores
pytestmark = [pytest.mark.anyio, pytest.mark.server]

SSE = {"accept": "text/event-stream"}
ND = {"accept": "application/x-ndjson"}
FIXTURES = Path(ag_ui_validate.__file__).parent / "spec" / "fixtures"
VALIDATOR = str(Path(sys.executable).with_name("ag-ui-validate"))



async def log_lines(g: RunningGateway, session: str = "s") -> list[bytes]:
    return (await stored_bytes(g, session)).split(b"\n")[:-1]


def append_raw(g: RunningGateway, data: bytes, session: str = "s") -> None:
    """What another process writing the log directly would do."""
    with open(g.settings.state_dir / "sessions" / session / LOG_NAME, "ab") as fh:
        fh.write(data)


async def epoch_of(g: RunningGateway, session: str = "s") -> str:
    epoch: str = (await g.http.get(f"{g.base}/v1/projects/p/sessions/{session}")).json()["epoch"]
    return epoch


async def read_stream(g: RunningGateway, query: str = "", headers: dict[str, str] | None = None, *,
                      accept: dict[str, str] = SSE, until: Callable[[bytes], bool] | None = None,
                      session: str = "s") -> bytes:
    """The raw body of a stream, until it ends or `until(body)` holds."""
    buf = b""
    with anyio.fail_after(10):
        async with g.http.stream("GET", g.events_url(session) + query, headers={**accept, **(headers or {})}) as resp:
            assert resp.status_code == 200, await resp.aread()
            assert resp.headers["content-type"].startswith(accept["accept"])
            async for chunk in resp.aiter_raw():
                buf += chunk
                if until is not None and until(buf):
                    break
    return buf


def sse_blocks(body: bytes) -> list[bytes]:
    assert body.endswith(b"\n\n") or not body, body[-80:]
    return body[:-2].split(b"\n\n") if body else []


def expected_events(epoch: str, lines: list[bytes], first: int = 1) -> bytes:
    return b"".join(b"id: %s-%d\ndata: %s\n\n" % (epoch.encode(), first + i, line) for i, line in enumerate(lines))


# -- SSE ---------------------------------------------------------------------------------------


async def test_sse_replay_is_retry_then_stored_events_byte_for_byte(gw: RunningGateway) -> None:
    await gw.append("s", [{"type": "A", "big": 12345678901234567890123, "s": "é \u2028 \\"}])
    await gw.http.post(gw.events_url("s"), content=b'{ "type" : "B",\n  "x": 1.50 }',
                       headers={"content-type": "application/json"})
    await gw.append("s", evs(3, 3))
    epoch = await epoch_of(gw)
    body = await read_stream(gw, "?follow=0")
    assert body == b"retry: 1000\n\n" + expected_events(epoch, await log_lines(gw))
    assert b'"x": 1.50' in body  # not re-encoded


async def test_sse_after_tail_and_last_event_id(gw: RunningGateway) -> None:
    await gw.append("s", evs(1, 6))
    epoch, lines = await epoch_of(gw), await log_lines(gw)
    body = await read_stream(gw, f"?follow=0&after={epoch}-2")
    assert body == b"retry: 1000\n\n" + expected_events(epoch, lines[2:], 3)
    body = await read_stream(gw, "?follow=0&tail=2")
    assert body == b"retry: 1000\n\n" + expected_events(epoch, lines[4:], 5)
    body = await read_stream(gw, "?follow=0&tail=0")
    assert body == b"retry: 1000\n\n"
    body = await read_stream(gw, "?follow=0&tail=100")
    assert body == b"retry: 1000\n\n" + expected_events(epoch, lines)
    # the header wins over the query
    body = await read_stream(gw, f"?follow=0&after={epoch}-1", {"last-event-id": f"{epoch}-4"})
    assert body == b"retry: 1000\n\n" + expected_events(epoch, lines[4:], 5)
    body = await read_stream(gw, "?follow=0", {"last-event-id": f"{epoch}-6"})
    assert body == b"retry: 1000\n\n"
    resp = await gw.http.get(gw.events_url("s") + "?follow=0", headers={**SSE, "last-event-id": "garbage"})
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "bad_cursor"


async def test_sse_foreign_or_future_cursor_is_a_reset_then_full_replay(gw: RunningGateway) -> None:
    await gw.append("s", evs(1, 3))
    epoch, lines = await epoch_of(gw), await log_lines(gw)
    for cursor in ("zzzzzz-2", f"{epoch}-99"):
        body = await read_stream(gw, f"?follow=0&after={cursor}")
        assert body == b"retry: 1000\n\n: reset epoch=%s\n\n" % epoch.encode() + expected_events(epoch, lines)
        body = await read_stream(gw, "?follow=0", {"last-event-id": cursor})
        assert body.startswith(b"retry: 1000\n\n: reset epoch=%s\n\n" % epoch.encode())


async def wait_for(cond: Callable[[], bool]) -> None:
    with anyio.fail_after(10):
        while not cond():
            await anyio.sleep(0.01)


async def test_sse_follow_default_is_on_live_comment_once_then_live_events(gw: RunningGateway) -> None:
    await gw.append("s", evs(1, 2))
    epoch = await epoch_of(gw)
    got: list[bytes] = []

    async def reader() -> None:
        await read_stream(gw, "", until=lambda b: got.append(b) or b.count(b"\ndata: ") >= 5)

    async with anyio.create_task_group() as tg:
        tg.start_soon(reader)
        await wait_for(lambda: bool(got) and b": live\n\n" in got[-1])
        for i in range(3, 6):
            await gw.append("s", evs(i, 1))
    lines = await log_lines(gw)
    assert got[-1] == (b"retry: 1000\n\n" + expected_events(epoch, lines[:2]) + b": live\n\n"
                       + expected_events(epoch, lines[2:], 3))


async def test_sse_follow_on_an_empty_log_waits_for_the_first_event(gw: RunningGateway) -> None:
    await gw.append("s", evs(1, 1))
    await gw.http.delete(gw.events_url("s"))
    epoch = await epoch_of(gw)
    got: list[bytes] = []

    async def reader() -> None:
        await read_stream(gw, "?follow=1", until=lambda b: got.append(b) or b"\ndata: " in b)

    async with anyio.create_task_group() as tg:
        tg.start_soon(reader)
        await wait_for(lambda: bool(got) and b": live\n\n" in got[-1])
        await gw.append("s", evs(7, 1))
    assert got[-1] == b"retry: 1000\n\n: live\n\n" + expected_events(epoch, await log_lines(gw))


async def test_sse_heartbeat_when_idle(tmp_path: Path) -> None:
    async with run_gateway(tmp_path / "state", heartbeat_interval=0.1) as g:
        await g.append("s", evs(1, 1))
        body = await read_stream(g, "", until=lambda b: b.count(b": heartbeat\n\n") >= 2)
        blocks = sse_blocks(body)
        first = (await log_lines(g))[0]
        assert blocks[:3] == [b"retry: 1000", b"id: %s-1\ndata: %s" % ((await epoch_of(g)).encode(), first), b": live"]
        assert blocks[3:] == [b": heartbeat", b": heartbeat"]


async def test_sse_delete_while_streaming_is_a_reset_then_the_new_epoch(gw: RunningGateway) -> None:
    await gw.append("s", evs(1, 2))
    got: list[bytes] = []

    async def reader() -> None:
        await read_stream(gw, "", until=lambda b: got.append(b) or b"-2\ndata: " in b.partition(b": reset")[2])

    async with anyio.create_task_group() as tg:
        tg.start_soon(reader)
        await wait_for(lambda: bool(got) and b": live" in got[-1])
        resp = await gw.http.delete(gw.events_url("s"))
        new = resp.json()["epoch"]
        await gw.append("s", evs(10, 2))
    body = got[-1]
    tail = body.partition(b": live\n\n")[2]
    assert tail == b": reset epoch=%s\n\n" % new.encode() + expected_events(new, await log_lines(gw))


async def test_sse_corrupt_and_oversize_lines_are_skipped_comments(tmp_path: Path) -> None:
    async with run_gateway(tmp_path / "state", max_event_bytes=200) as g:
        await g.append("s", evs(1, 1))
        append_raw(g, b'{"type": "broken\n' + b'{"type":"big","pad":"' + b"x" * 300 + b'"}\n')
        await g.append("s", evs(4, 1))
        epoch, lines = await epoch_of(g), await log_lines(g)
        body = await read_stream(g, "?follow=0")
        assert sse_blocks(body) == [
            b"retry: 1000",
            b"id: %s-1\ndata: %s" % (epoch.encode(), lines[0]),
            b": skipped seq=2 reason=corrupt bytes=%d" % len(lines[1]),
            b": skipped seq=3 reason=oversize bytes=%d" % len(lines[2]),
            b"id: %s-4\ndata: %s" % (epoch.encode(), lines[3]),
        ]


@pytest.mark.files_only
async def test_sse_data_survives_a_carriage_return_inside_a_stored_line(gw: RunningGateway) -> None:
    await gw.append("s", evs(1, 1))
    append_raw(gw, b'{"type":"A",\r"n":2}\n')
    await gw.append("s", evs(3, 1))
    body = await read_stream(gw, "?follow=0")
    # An SSE parser splits lines at CRLF, LF or CR (HTML Living Standard, 9.2.6).
    data = [line[6:] for line in re.split(rb"\r\n|\r|\n", body) if line.startswith(b"data: ")]
    assert [orjson.loads(d)["n"] for d in data] == [1, 2, 3]


def capture(tmp_path: Path, name: str, body: bytes) -> Path:
    path = tmp_path / f"{name}.sse"
    path.write_bytes(body)
    return path


async def validate(path: Path) -> subprocess.CompletedProcess[bytes]:
    return await anyio.run_process([VALIDATOR, "--no-color", str(path)], check=False)


async def test_ag_ui_validate_passes_on_sse_replays_of_its_valid_fixtures(gw: RunningGateway, tmp_path: Path) -> None:
    fixtures = sorted((FIXTURES / "valid").glob("*.jsonl"))
    assert len(fixtures) >= 5
    for i, fixture in enumerate(fixtures):
        session = f"valid-{i}"
        resp = await gw.http.post(gw.events_url(session), content=fixture.read_bytes(),
                                  headers={"content-type": "application/x-ndjson"})
        assert resp.status_code == 201, resp.text
        body = await read_stream(gw, "?follow=0", session=session)
        assert body.count(b"\ndata: ") == len(await log_lines(gw, session)) > 0
        result = await validate(capture(tmp_path, fixture.stem, body))
        assert result.returncode == 0, (fixture.name, result.stdout.decode(), result.stderr.decode())


async def test_ag_ui_validate_fails_on_an_sse_replay_of_an_invalid_fixture(gw: RunningGateway, tmp_path: Path) -> None:
    fixture = FIXTURES / "invalid" / "AGUI101-content-without-start" / "stream.jsonl"
    resp = await gw.http.post(gw.events_url("bad"), content=fixture.read_bytes(),
                              headers={"content-type": "application/x-ndjson"})
    assert resp.status_code == 201, resp.text
    body = await read_stream(gw, "?follow=0", session="bad")
    result = await validate(capture(tmp_path, "invalid", body))
    assert result.returncode == 1, result.stdout.decode()
    assert b"AGUI101" in result.stdout


# -- NDJSON ------------------------------------------------------------------------------------


def nd_event(epoch: str, seq: int, line: bytes) -> bytes:
    return b'{"seq":%d,"cursor":"%s-%d","event":%s}\n' % (seq, epoch.encode(), seq, line)


async def test_ndjson_default_is_a_full_replay_that_ends(gw: RunningGateway) -> None:
    await gw.append("s", [{"type": "A", "big": 98765432109876543210987654321, "f": 1.10}])
    await gw.append("s", evs(2, 3))
    epoch, lines = await epoch_of(gw), await log_lines(gw)
    body = await read_stream(gw, accept=ND)  # no follow: ends by itself
    assert body == b"".join(nd_event(epoch, i + 1, line) for i, line in enumerate(lines))
    for n, line in enumerate(body.splitlines(), start=1):
        obj = orjson.loads(line)
        assert set(obj) == {"seq", "cursor", "event"} and obj["seq"] == n


async def test_ndjson_tail_after_and_reset(gw: RunningGateway) -> None:
    await gw.append("s", evs(1, 5))
    epoch, lines = await epoch_of(gw), await log_lines(gw)
    assert await read_stream(gw, "?tail=2", accept=ND) == nd_event(epoch, 4, lines[3]) + nd_event(epoch, 5, lines[4])
    assert await read_stream(gw, f"?after={epoch}-3", accept=ND) == (nd_event(epoch, 4, lines[3])
                                                                      + nd_event(epoch, 5, lines[4]))
    assert await read_stream(gw, f"?after={epoch}-5", accept=ND) == b""
    body = await read_stream(gw, "?after=other1-3", accept=ND)
    first, _, rest = body.partition(b"\n")
    assert orjson.loads(first) == {"reset": {"epoch": epoch}}
    assert rest == b"".join(nd_event(epoch, i + 1, line) for i, line in enumerate(lines))
    # Last-Event-ID is an SSE thing: NDJSON ignores it
    assert await read_stream(gw, "?tail=1", {"last-event-id": f"{epoch}-1"}, accept=ND) == nd_event(epoch, 5, lines[4])


async def test_ndjson_skipped_lines_are_controls_without_event(tmp_path: Path) -> None:
    async with run_gateway(tmp_path / "state", max_event_bytes=100) as g:
        await g.append("s", evs(1, 1))
        append_raw(g, b"not json\n" + b'{"type":"big","pad":"' + b"x" * 200 + b'"}\n')
        await g.append("s", evs(4, 1))
        epoch, lines = await epoch_of(g), await log_lines(g)
        out = (await read_stream(g, accept=ND)).splitlines()
        assert out[0] + b"\n" == nd_event(epoch, 1, lines[0])
        assert orjson.loads(out[1]) == {"seq": 2, "cursor": f"{epoch}-2",
                                        "skipped": {"reason": "corrupt", "bytes": len(lines[1])}}
        assert orjson.loads(out[2]) == {"seq": 3, "cursor": f"{epoch}-3",
                                        "skipped": {"reason": "oversize", "bytes": len(lines[2])}}
        assert out[3] + b"\n" == nd_event(epoch, 4, lines[3])
        assert len(out) == 4


async def test_ndjson_follow_live_heartbeat_and_reset(tmp_path: Path) -> None:
    async with run_gateway(tmp_path / "state", heartbeat_interval=0.1) as g:
        await g.append("s", evs(1, 1))
        got: list[bytes] = []

        def done(body: bytes) -> bool:
            got.append(body)
            return body.endswith(b"\n") and b'"seq":2,' in body.partition(b'"reset"')[2]

        async def reader() -> None:
            await read_stream(g, "?follow=1", accept=ND, until=done)

        async with anyio.create_task_group() as tg:
            tg.start_soon(reader)
            await wait_for(lambda: bool(got) and b'"heartbeat"' in got[-1])
            old = await epoch_of(g)
            await g.append("s", evs(2, 1))
            await wait_for(lambda: b'"seq":2,' in got[-1])
            new = (await g.http.delete(g.events_url("s"))).json()["epoch"]
            await g.append("s", evs(10, 2))
        objs = [orjson.loads(line) for line in got[-1].splitlines()]
        lines = await log_lines(g)
        kinds = [next(iter(k for k in ("event", "heartbeat", "reset") if k in o)) for o in objs]
        assert [o for o in objs if "event" in o] == [
            {"seq": 1, "cursor": f"{old}-1", "event": evs(1, 1)[0]},
            {"seq": 2, "cursor": f"{old}-2", "event": evs(2, 1)[0]},
            {"seq": 1, "cursor": f"{new}-1", "event": orjson.loads(lines[0])},
            {"seq": 2, "cursor": f"{new}-2", "event": orjson.loads(lines[1])},
        ]
        assert {"reset": {"epoch": new}} in objs
        assert kinds.index("reset") > kinds.index("heartbeat") > 0
        for o in objs:
            if "heartbeat" in o:
                assert set(o) == {"heartbeat"} and isinstance(o["heartbeat"], int)
        assert not any(o.get("control") == "live" or "live" in o for o in objs)
