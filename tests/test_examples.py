"""The examples, run as a user runs them, against real gateways; and the built-in demo writer."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import httpx
import orjson
import pytest
from ag_ui.core import Event as AguiEvent
from pydantic import TypeAdapter

from examples.fake_runner import build_app, run_input
from gateway import demo
from gateway.client import Event, GatewayClient, Reset
from tests.conftest import RunningGateway, run_gateway

pytestmark = [pytest.mark.anyio, pytest.mark.server]

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


async def example(name: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    with anyio.fail_after(60):
        return await anyio.run_process([sys.executable, str(EXAMPLES / name), *args], check=False)


async def fake_runner_events(question: str) -> list[dict[str, Any]]:
    """POST a RunAgentInput to the fake runner and parse its SSE answer."""
    body = run_input("t1", question).model_dump_json(by_alias=True)
    transport = httpx.ASGITransport(app=build_app(delay=0))
    async with httpx.AsyncClient(transport=transport, base_url="http://runner") as http:
        resp = await http.post("/", content=body, headers={"content-type": "application/json"})
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
    return [orjson.loads(line[6:]) for line in resp.text.splitlines() if line.startswith("data: ")]


async def test_fake_runner_streams_a_valid_realistic_run() -> None:
    events = await fake_runner_events("What is a cursor?")
    adapter: TypeAdapter[Any] = TypeAdapter(AguiEvent)
    for event in events:
        adapter.validate_python(event)
    types = [e["type"] for e in events]
    assert types[0] == "RUN_STARTED" and types[-1] == "RUN_FINISHED"
    assert {"TEXT_MESSAGE_CONTENT", "TOOL_CALL_ARGS", "TOOL_CALL_RESULT", "STATE_SNAPSHOT",
            "TEXT_MESSAGE_CHUNK"} <= set(types)
    args = "".join(e["delta"] for e in events if e["type"] == "TOOL_CALL_ARGS")
    assert orjson.loads(args)["query"] == "What is a cursor?"


async def test_replay_session_and_watch_live_examples(gw: RunningGateway, tmp_path: Path) -> None:
    events = await fake_runner_events("Where are the docs?")
    await gw.append("chat", events, project="default")
    out = tmp_path / "chat.jsonl"
    done = await example("replay_session.py", "--url", gw.base, "--session", "chat", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert [orjson.loads(line) for line in out.read_bytes().splitlines()] == events

    done = await example("watch_live.py", "--url", gw.base, "--session", "chat", "--runs", "1")
    assert done.returncode == 0, done.stderr
    text = done.stdout.decode()
    assert "assistant: Let me look that up: “Where are the docs?”." in text
    assert 'tool search_docs({"query": "Where are the docs?", "limit": 3})' in text
    assert "result: " in text and "I found two pages" in text and "--- finished ---" in text


async def test_load_generator_is_bounded_and_loopback_only(gw: RunningGateway) -> None:
    done = await example("load_generator.py", "--url", gw.base, "--writers", "2", "--readers", "3",
                         "--events", "200", "--batch", "20", "--max-seconds", "45")
    assert done.returncode == 0, done.stderr
    text = done.stdout.decode()
    assert "appended  400 events by 2 writers" in text
    assert "delivered 600 events to 3 readers" in text
    assert "latency ms  p50" in text
    refused = await example("load_generator.py", "--url", "http://10.1.2.3:8080")
    assert refused.returncode == 2 and b"only targets a gateway on this machine" in refused.stderr


async def test_demo_writes_live_runs_and_restarts_when_the_log_is_full(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(demo, "RUN_INTERVAL", 0.05)
    monkeypatch.setattr(demo, "CHUNK_DELAY", 0.001)
    monkeypatch.setattr(demo, "MAX_LINES", 60)
    runs: list[list[str]] = []
    resets = 0
    async with run_gateway(tmp_path / "state", demo=True) as g, GatewayClient(g.base, "default") as client:
        with anyio.fail_after(30):
            while True:  # the demo session appears once the writer made it
                if (await g.http.get(client.session_url("demo"))).status_code == 200:
                    break
                await anyio.sleep(0.02)
            async with client.events("demo") as stream:
                async for item in stream:
                    if isinstance(item, Reset):
                        resets += 1
                    elif isinstance(item, Event):
                        if item.type == "RUN_STARTED":
                            runs.append([])
                        runs[-1].append(item.type)
                        if resets and item.type == "RUN_FINISHED":
                            break
        done = await example("watch_live.py", "--url", g.base, "--runs", "2")
    assert resets == 1
    assert len(runs) >= 3
    for run in runs:
        assert run[0] == "RUN_STARTED" and run[-1] == "RUN_FINISHED"
        assert {"TOOL_CALL_ARGS", "TOOL_CALL_RESULT", "STATE_SNAPSHOT", "TEXT_MESSAGE_CONTENT"} <= set(run)
    assert done.returncode == 0, done.stderr
    assert b"user: " in done.stdout and b"assistant: " in done.stdout and b"result: " in done.stdout
