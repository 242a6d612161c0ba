"""The Python client against real gateways: resume across restarts, resets, slow-consumer closes."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import orjson
import pytest
from websockets.asyncio.server import ServerConnection, serve

from gateway.client import (
    Backoff,
    Event,
    EventStream,
    GatewayClient,
    GatewayError,
    GatewayUnreachable,
    Live,
    Reset,
    StreamItem,
    split_session_url,
)
from tests.conftest import RunningGateway, free_port, run_gateway

pytestmark = [pytest.mark.anyio, pytest.mark.server]

FAST = Backoff(initial=0.05, maximum=0.5)


def numbered(start: int, stop: int) -> list[dict[str, Any]]:
    return [{"type": "CUSTOM", "name": "n", "value": i} for i in range(start, stop)]


def client_for(g: RunningGateway, project: str = "p") -> GatewayClient:
    return GatewayClient(g.base, project)


async def take(stream: EventStream, count: int) -> list[StreamItem]:
    """The next `count` items that are events or resets (Live markers are left out)."""
    out: list[StreamItem] = []
    with anyio.fail_after(20):
        async for item in stream:
            if not isinstance(item, Live):
                out.append(item)
            if len(out) == count:
                break
    return out


def values(items: list[StreamItem]) -> list[int]:
    return [item.data["value"] for item in items if isinstance(item, Event)]


@pytest.mark.parametrize("transport", ["websocket", "sse"])
async def test_replay_then_live(gw: RunningGateway, transport: Any) -> None:
    await gw.append("s", numbered(0, 10))
    async with client_for(gw) as client, client.events("s", transport=transport) as stream:
        seen: list[StreamItem] = []
        with anyio.fail_after(10):
            async for item in stream:
                seen.append(item)
                if isinstance(item, Live):
                    break
        assert values(seen) == list(range(10))
        assert [i.seq for i in seen if isinstance(i, Event)] == list(range(1, 11))
        await gw.append("s", numbered(10, 15))
        assert values(await take(stream, 5)) == list(range(10, 15))
        assert stream.cursor is not None and stream.cursor.endswith("-15")
        if transport == "websocket":
            assert stream.head is not None and stream.head.endswith("-10")


@pytest.mark.parametrize("transport", ["websocket", "sse"])
async def test_server_restart_mid_stream_resumes_without_gaps_or_duplicates(
    tmp_path: Path, transport: Any
) -> None:
    state, port = tmp_path / "state", free_port()
    received: list[StreamItem] = []
    async with anyio.create_task_group() as tg:
        stream = GatewayClient(f"http://127.0.0.1:{port}", "p").events("s", transport=transport, backoff=FAST)
        first_half, second_half = anyio.Event(), anyio.Event()

        async def consume() -> None:
            with anyio.fail_after(30):
                async for item in stream:
                    if isinstance(item, Live):
                        continue
                    received.append(item)
                    if len(received) == 50:
                        first_half.set()
                    if len(received) == 100:
                        break
            await stream.aclose()
            second_half.set()

        async with run_gateway(state, port=port) as g1:
            await g1.append("s", numbered(0, 50))
            tg.start_soon(consume)
            await first_half.wait()
            g1.gateway.begin_shutdown()  # what SIGTERM does first: streams close (1001 / end of body)
        async with run_gateway(state, port=port) as g2:
            await g2.append("s", numbered(50, 100))
            await second_half.wait()
    assert values(received) == list(range(100))
    assert [i.seq for i in received if isinstance(i, Event)] == list(range(1, 101))
    assert stream.reconnects >= 1


async def test_delete_then_append_is_surfaced_as_reset(gw: RunningGateway) -> None:
    await gw.append("s", numbered(0, 5))
    async with client_for(gw) as client, client.events("s") as stream:
        before = await take(stream, 5)
        old_epoch = stream.epoch
        await client.delete("s")
        await gw.append("s", numbered(100, 103))
        after = await take(stream, 4)
    assert values(before) == list(range(5))
    assert isinstance(after[0], Reset) and after[0].epoch != old_epoch
    assert values(after) == [100, 101, 102]
    assert [i.seq for i in after if isinstance(i, Event)] == [1, 2, 3]


async def test_cursor_of_a_deleted_log_resumes_with_reset(gw: RunningGateway) -> None:
    old = await gw.append("s", numbered(0, 3))
    async with client_for(gw) as client:
        await client.delete("s")
        await client.append("s", numbered(10, 12))
        async with client.events("s", after=old["last"], follow=False) as stream:
            items = [i async for i in stream]
    assert isinstance(items[0], Reset)
    assert values(items) == [10, 11]


async def test_slow_consumer_closed_by_server_resumes_from_its_cursor(tmp_path: Path) -> None:
    """Buffers fill while the consumer sleeps, the server gives up on it (4408, or 1006 after abort)."""
    padding = "x" * 1000
    total = 24_000  # ~24 MB: more than client queue + kernel buffers can hold
    async with run_gateway(tmp_path / "state", send_timeout=0.3) as g:
        for start in range(0, total, 4000):
            await g.append("s", [{"type": "CUSTOM", "value": i, "pad": padding}
                                 for i in range(start, start + 4000)])
        seen: list[int] = []
        async with client_for(g) as client, client.events("s", follow=False, backoff=FAST) as stream:
            with anyio.fail_after(60):
                async for item in stream:
                    assert isinstance(item, Event)
                    seen.append(item.seq)
                    if len(seen) == 1:
                        await anyio.sleep(2)
    assert seen == list(range(1, total + 1))
    assert stream.reconnects >= 1
    assert set(stream.closes) <= {4408, 1006}


async def test_4408_close_is_resumed_with_after_and_overlap_is_not_yielded_twice() -> None:
    """Scripted server: close 4408 mid-stream, then replay from one event too early on resume."""
    afters: list[str | None] = []

    def batch(first: int, last: int) -> str:
        events = [{"type": "CUSTOM", "value": i} for i in range(first, last + 1)]
        line = {"first": first, "last": last, "cursor": f"ep0001-{last}", "events": events}
        return orjson.dumps(line).decode()

    async def handler(ws: ServerConnection) -> None:
        assert ws.request is not None
        after = parse_qs(urlsplit(ws.request.path).query).get("after", [None])[0]
        afters.append(after)
        hello = {"control": "hello", "session": "s", "epoch": "ep0001", "reset": False, "head": "ep0001-6"}
        if after is None:
            await ws.send(orjson.dumps(hello).decode() + "\n" + batch(1, 3))
            await ws.close(4408, "client too slow")
        else:
            await ws.send(orjson.dumps(hello).decode() + "\n" + batch(3, 6))  # 3 again: must be dropped
            await ws.close(1000, "end of log")

    async with serve(handler, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        async with GatewayClient(f"http://127.0.0.1:{port}", "p") as client:
            stream = client.events("s", follow=False, backoff=FAST)
            with anyio.fail_after(10):
                items = [i async for i in stream]
    assert [i.seq for i in items if isinstance(i, Event)] == [1, 2, 3, 4, 5, 6]
    assert afters == [None, "ep0001-3"]
    assert stream.closes == [4408]


async def test_refusals_raise_gateway_error_and_unreachable_gives_up(gw: RunningGateway) -> None:
    async with client_for(gw) as client:
        with pytest.raises(GatewayError) as ws_err:
            async for _ in client.events("nope"):
                pass
        assert ws_err.value.status == 404
        with pytest.raises(GatewayError) as sse_err:
            async for _ in client.events("nope", transport="sse"):
                pass
        assert sse_err.value.status == 404
        with pytest.raises(GatewayError) as http_err:
            await client.status("nope")
        assert http_err.value.status == 404 and http_err.value.code
    async with GatewayClient(f"http://127.0.0.1:{free_port()}", "p") as dead:
        with pytest.raises(GatewayUnreachable):
            async for _ in dead.events("s", max_retries=2, backoff=FAST):
                pass


async def test_append_status_export_and_sessions(gw: RunningGateway) -> None:
    async with client_for(gw) as client:
        result = await client.append("s", numbered(0, 3))
        assert result["count"] == 3
        ndjson = b"".join(orjson.dumps(e) + b"\n" for e in numbered(3, 5))
        assert (await client.append("s", ndjson))["count"] == 2
        status = await client.status("s")
        assert status["events"] == 5 and status["head"] == status["epoch"] + "-5"
        exported = b"".join([chunk async for chunk in client.export("s")])
        assert [orjson.loads(line)["value"] for line in exported.splitlines()] == list(range(5))
        as_json = b"".join([chunk async for chunk in client.export("s", "json")])
        assert len(orjson.loads(as_json)) == 5
        for name in ("s2", "s3"):
            await client.append(name, numbered(0, 1))
        await gw.append("other", numbered(0, 1), project="q")
        names = [item["session"] async for item in client.sessions(page_size=1)]
    assert names == ["s", "s2", "s3"]


def test_split_session_url() -> None:
    assert split_session_url("http://h:1/v1/projects/p/sessions/s") == ("http://h:1", "p", "s")
    assert split_session_url("https://h/gw/v1/projects/p/sessions/s/events") == ("https://h/gw", "p", "s")
    with pytest.raises(ValueError):
        split_session_url("http://h/v1/projects/p")


DOC_EXAMPLE = (Path(__file__).resolve().parent.parent / "docs" / "client.md").read_text() \
    .split("```python\n", 1)[1].split("```", 1)[0]


async def test_the_documented_example_runs(gw: RunningGateway, tmp_path: Path) -> None:
    script = tmp_path / "example.py"
    script.write_text(DOC_EXAMPLE)
    run = [{"type": "RUN_STARTED"}, {"type": "TEXT_MESSAGE_CONTENT", "messageId": "m", "delta": "hey"},
           {"type": "RUN_FINISHED"}]
    await gw.append("demo", run, project="default")
    with anyio.fail_after(30):
        async with await anyio.open_process([sys.executable, str(script)],
                                            env={**os.environ, "GATEWAY_URL": gw.base}) as proc:
            while proc.returncode is None:  # runs keep coming, as in the demo session
                await gw.append("demo", run, project="default")
                with anyio.move_on_after(0.3):
                    await proc.wait()
            assert proc.stdout is not None
            out = b"".join([chunk async for chunk in proc.stdout]).decode()
    assert proc.returncode == 0
    assert "2 TEXT_MESSAGE_CONTENT hey" in out and "-- live from" in out
    assert "resume later with after =" in out


class _RefuseWebSockets:
    """What a proxy without WebSocket support does: the upgrade gets a plain HTTP answer."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.http.response.start", "status": 426, "headers": []})
            await send({"type": "websocket.http.response.body", "body": b"no websockets here"})
            return
        await self.app(scope, receive, send)


async def test_auto_transport_falls_back_to_sse_when_the_upgrade_is_refused(gw: RunningGateway) -> None:
    import uvicorn

    await gw.append("s", numbered(0, 5))
    port = free_port()
    proxy = uvicorn.Server(uvicorn.Config(_RefuseWebSockets(gw.server.config.app), host="127.0.0.1", port=port,
                                          lifespan="off", log_level="warning"))
    async with anyio.create_task_group() as tg:
        tg.start_soon(proxy.serve)
        while not proxy.started:
            await anyio.sleep(0.01)
        try:
            async with GatewayClient(f"http://127.0.0.1:{port}", "p") as client, \
                    client.events("s", follow=False) as stream:
                items = [item async for item in stream]
            assert values(items) == list(range(5))
            assert all(isinstance(i, Event) and i.raw for i in items if isinstance(i, Event))
            assert stream.head is None  # SSE has no hello: the fallback really happened
        finally:
            proxy.should_exit = True
