"""The protocol's maintained clients on a session: npm `@durable-streams/client` (in node) and PyPI
`durable-streams` read it replayed then live, resume from a saved offset after the gateway
restarted with no gap and no duplicate, and append to it with an idempotent producer."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
from durable_streams import AsyncDurableStream, astream

from tests.conftest import RunningGateway, node

pytestmark = [pytest.mark.anyio, pytest.mark.external]

STORES = ("files", "nats")
Factory = Callable[..., AbstractAsyncContextManager[RunningGateway]]
Reader = Callable[[str, str, str, int], Awaitable[tuple[list[Any], str]]]


def events(first: int, last: int) -> list[dict[str, Any]]:
    return [{"type": "CUSTOM", "name": f"e{i}"} for i in range(first, last)]


async def waiting(gw: RunningGateway) -> None:
    """Until a live read waits on a log: the client has replayed everything there is."""
    while not any(log.waiters for log in gw.gateway.store.logs.values()):  # type: ignore[attr-defined]
        await anyio.sleep(0.01)


async def replay_live_restart_resume(gateway_factory: Factory, read: Reader) -> None:
    got: list[Any] = []
    offset = ""
    async with gateway_factory() as gw:
        url = f"{gw.base}/ds/p/v1/stream/sessions/s"
        await gw.append("s", events(0, 50))

        async def first_read() -> None:
            nonlocal offset
            items, offset = await read(url, "-1", "sse", 75)
            got.extend(items)

        async with anyio.create_task_group() as tg:
            tg.start_soon(first_read)
            await waiting(gw)  # replayed: the rest arrives live
            for i in range(50, 75):
                await gw.append("s", events(i, i + 1))
    async with gateway_factory() as gw:
        url = f"{gw.base}/ds/p/v1/stream/sessions/s"
        await gw.append("s", events(75, 100))
        items, _ = await read(url, offset, "long-poll", 25)
        got.extend(items)
    assert got == events(0, 100)  # every event once, in order: no gap, no duplicate


async def test_the_npm_client_replays_follows_and_resumes_after_a_restart(
        node_modules: Path, gateway_factory: Factory) -> None:
    async def read(url: str, offset: str, live: str, count: int) -> tuple[list[Any], str]:
        out = await node(node_modules, "ds_client.cjs", "read", url, offset, live, str(count))
        return out["items"], out["offset"]

    await replay_live_restart_resume(gateway_factory, read)


async def test_the_npm_client_appends_with_an_idempotent_producer(node_modules: Path, gw: RunningGateway) -> None:
    await gw.append("s", events(0, 2))
    url = f"{gw.base}/ds/p/v1/stream/sessions/s"
    sent = [f'{{"type":"CUSTOM","name":"n{i}"}}' for i in range(3)]
    assert await node(node_modules, "ds_client.cjs", "append", url, "ui-1", *sent) == {"appended": 3}
    stored = [line["event"] for line in await ndjson(gw, "s")]
    assert stored == [*events(0, 2), *({"type": "CUSTOM", "name": f"n{i}"} for i in range(3))]


async def ndjson(gw: RunningGateway, session: str) -> list[dict[str, Any]]:
    resp = await gw.http.get(gw.events_url(session))
    return [orjson.loads(line) for line in resp.content.splitlines()]


async def test_the_python_client_replays_follows_and_resumes_after_a_restart(gateway_factory: Factory) -> None:
    async def read(url: str, offset: str, live: str, count: int) -> tuple[list[Any], str]:
        items: list[Any] = []
        async with astream(url, offset=offset, live=live) as res:  # type: ignore[arg-type]
            async for event in res.iter_events(mode="json_batches"):
                items += event.data
                if len(items) >= count:
                    return items, str(event.next_offset)
        raise AssertionError(f"the stream ended after {len(items)} of {count} items")

    await replay_live_restart_resume(gateway_factory, read)


async def test_the_python_client_appends(gw: RunningGateway) -> None:
    url = f"{gw.base}/ds/p/v1/stream/sessions/s"
    await gw.append("s", events(0, 1))
    async with AsyncDurableStream(url, content_type="application/json", batching=False) as handle:
        result = await handle.append({"type": "CUSTOM", "name": "from-python"})
    head = await gw.http.head(url)
    assert result.next_offset == head.headers["stream-next-offset"]
    assert [line["event"] for line in await ndjson(gw, "s")] == [*events(0, 1), {"type": "CUSTOM",
                                                                                "name": "from-python"}]
