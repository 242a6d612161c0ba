"""The platform backend's compatibility routes through a real gateway."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from examples.fake_runner import build_app
from tests.conftest import RunningGateway, run_gateway
from tests.runner_helpers import parse_sse, run_body, serve_runner, set_runner_port, stored, wait_until_done

pytestmark = [pytest.mark.anyio, pytest.mark.server]


@pytest.fixture
async def gw(tmp_path: Path) -> AsyncIterator[RunningGateway]:
    async with run_gateway(tmp_path / "state", runner_url="http://127.0.0.1:{port}/") as running:
        yield running


def compat(gw: RunningGateway, session: str = "", tail: str = "", project: str = "p") -> str:
    base = f"{gw.base}/api/projects/{project}/agentic-sessions"
    return f"{base}/{session}{tail}" if session else base


def log_lines(gw: RunningGateway, session: str) -> list[bytes]:
    return (gw.settings.state_dir / "sessions" / session / "agui-events.jsonl").read_bytes().splitlines()


async def test_list_pages_match_the_sorted_full_list(gw: RunningGateway) -> None:
    rng = random.Random(7)
    created = rng.sample(range(1_700_000_000_000, 1_700_000_100_000), 23)
    for i, ms in enumerate(created):
        folder = gw.settings.state_dir / "sessions" / f"s-{i:02d}"
        folder.mkdir(parents=True)
        (folder / "meta.json").write_bytes(orjson.dumps({"project": "p", "createdAt": ms,
                                                         "displayName": "Deploy" if i % 3 else "Other"}))
    other = gw.settings.state_dir / "sessions" / "theirs"
    other.mkdir()
    (other / "meta.json").write_bytes(orjson.dumps({"project": "q", "createdAt": created[0]}))
    newest_first = [f"s-{i:02d}" for _, i in sorted(((ms, i) for i, ms in enumerate(created)), reverse=True)]
    for offset, limit in [(0, 5), (5, 5), (7, 4), (20, 10), (23, 3), (0, 100)]:
        resp = await gw.http.get(compat(gw), params={"offset": offset, "limit": limit})
        page = resp.json()
        assert [item["metadata"]["name"] for item in page["items"]] == newest_first[offset : offset + limit]
        more = offset + limit < len(created)
        assert page["totalCount"] == len(created) and page["limit"] == limit and page["offset"] == offset
        assert page["hasMore"] is more
        assert page["nextOffset"] == (offset + limit if more else None)
    found = (await gw.http.get(compat(gw), params={"search": "other"})).json()
    assert found["totalCount"] == len(range(0, 23, 3))
    assert (await gw.http.get(compat(gw), params={"offset": -1})).status_code == 400


async def test_export_shape_streams_events_byte_for_byte(gw: RunningGateway) -> None:
    folder = gw.settings.state_dir / "sessions" / "s1"
    folder.mkdir(parents=True)
    legacy = [{"type": "user_message", "payload": {"content": "hi"}},
              {"type": "agent.message", "payload": {"content": {"type": "text_block", "text": "hello"}}}]
    (folder / "messages.jsonl").write_bytes(b"".join(orjson.dumps(m) + b"\n" for m in legacy) + b"torn{\n")
    await gw.append("s1", [{"type": "CUSTOM", "name": "n", "value": {"big": 2**70, "s": "é\u2028"}}])
    await gw.append("s1", [{"type": "RUN_STARTED", "threadId": "t", "runId": f"r{i}"} for i in range(2000)])
    resp = await gw.http.get(compat(gw, "s1", "/export"))
    assert resp.status_code == 200 and "attachment" in resp.headers["content-disposition"]
    body = resp.content
    doc = orjson.loads(body)
    assert set(doc) == {"sessionId", "projectName", "exportDate", "aguiEvents", "legacyMessages", "hasLegacy"}
    assert doc["sessionId"] == "s1" and doc["projectName"] == "p" and doc["hasLegacy"] is True
    assert doc["exportDate"].endswith("Z")
    lines = log_lines(gw, "s1")
    assert b'"aguiEvents":[' + b",".join(lines) + b"]" in body  # spliced, never re-encoded
    assert doc["aguiEvents"][0]["type"] == "MESSAGES_SNAPSHOT"  # the legacy migration
    assert len(doc["aguiEvents"]) == 2002
    assert doc["legacyMessages"] == legacy  # the unreadable line is left out

    await gw.append("s2", [{"type": "CUSTOM", "name": "n", "value": 1}])
    plain = orjson.loads((await gw.http.get(compat(gw, "s2", "/export"))).content)
    assert plain["hasLegacy"] is False and "legacyMessages" not in plain
    assert (await gw.http.get(compat(gw, "nosuch", "/export"))).status_code == 404


async def test_agui_events_is_sse_framed(gw: RunningGateway) -> None:
    await gw.append("s1", [{"type": "CUSTOM", "name": "n", "value": i} for i in range(5)])
    resp = await gw.http.get(compat(gw, "s1", "/agui/events"), params={"follow": "0"})
    assert resp.headers["content-type"].startswith("text/event-stream")
    assert resp.content.startswith(b"retry: 1000\n\n")
    epoch = (await gw.http.get(f"{gw.base}/v1/projects/p/sessions/s1")).json()["epoch"]
    assert parse_sse(resp.content) == [(f"{epoch}-{i}", line) for i, line in enumerate(log_lines(gw, "s1"), 1)]
    resumed = await gw.http.get(compat(gw, "s1", "/agui/events"), params={"follow": "0"},
                                headers={"last-event-id": f"{epoch}-3"})
    assert [ident for ident, _ in parse_sse(resumed.content)] == [f"{epoch}-4", f"{epoch}-5"]


async def test_agui_run_interrupt_feedback_capabilities(gw: RunningGateway) -> None:
    async with serve_runner(build_app(delay=60)) as port:
        set_runner_port(gw.settings.state_dir, "s1", port)
        body = run_body()
        resp = await gw.http.post(compat(gw, "s1", "/agui/run"), json=body)
        assert resp.status_code == 200 and resp.json() == {"runId": body["runId"], "threadId": "t1"}
        caps = await gw.http.get(compat(gw, "s1", "/agui/capabilities"))
        assert caps.json()["name"] == "fake-runner"
        while not any(e["type"] == "RUN_STARTED" for e in stored(gw, "s1")):
            await gw.http.get(compat(gw, "s1", "/agui/capabilities"))  # a bounded wait: each call is a request
        resp = await gw.http.post(compat(gw, "s1", "/agui/interrupt"))  # no runId: the run in progress
        assert resp.status_code == 202, resp.text
        events = await wait_until_done(gw, "s1")
        assert events[-1]["outcome"] == {"type": "cancelled"}
        resp = await gw.http.post(compat(gw, "s1", "/agui/interrupt"), json={})
        assert resp.status_code == 404 and resp.json()["error"]["code"] == "no_run"
    resp = await gw.http.post(compat(gw, "s1", "/agui/feedback"), json={"metaType": "thumbs_down"})
    assert resp.status_code == 201
    last: dict[str, Any] = stored(gw, "s1")[-1]
    assert last["type"] == "META" and last["metaType"] == "thumbs_down"
