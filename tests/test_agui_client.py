"""The real npm `@ag-ui/client` against the gateway: HttpAgent on POST .../runs, its SSE parser on agui/events.

The package is installed with npm into `.cache/node/` once per test session; node runs the small
scripts in `tests/node/`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from examples.fake_runner import build_app
from tests.conftest import RunningGateway, node, run_gateway
from tests.runner_helpers import serve_runner, set_runner_port, stored

pytestmark = [pytest.mark.anyio, pytest.mark.external]

def expand_chunks(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What HttpAgent hands subscribers: it turns each TEXT_MESSAGE_CHUNK into START, CONTENT, END."""
    out: list[dict[str, Any]] = []
    for e in events:
        if e["type"] == "TEXT_MESSAGE_CHUNK":
            mid = e["messageId"]
            out += [{"type": "TEXT_MESSAGE_START", "messageId": mid, "role": e["role"]},
                    {"type": "TEXT_MESSAGE_CONTENT", "messageId": mid, "delta": e["delta"]},
                    {"type": "TEXT_MESSAGE_END", "messageId": mid}]
        else:
            out.append(e)
    return out


async def test_http_agent_runs_through_the_gateway(node_modules: Path, tmp_path: Path) -> None:
    async with serve_runner(build_app(delay=0.01)) as port, \
            run_gateway(tmp_path / "state", runner_url="http://127.0.0.1:{port}/") as gw:
        set_runner_port(gw.settings.state_dir, "s1", port)
        url = f"{gw.base}/v1/projects/p/sessions/s1/runs"
        out = await node(node_modules, "http_agent.cjs", url, "t1", "run-node-1")
        log = stored(gw, "s1")
    received = out["events"]
    assert log[0]["type"] == "MESSAGES_SNAPSHOT"
    assert received == expand_chunks(log[1:])  # every runner event of the run, as persisted
    assert received[0]["type"] == "RUN_STARTED" and received[-1]["type"] == "RUN_FINISHED"
    assert received[-1]["runId"] == "run-node-1"
    texts = [m.get("content") for m in out["messages"] if m["role"] == "assistant"]
    assert any("Let me look that up" in (t or "") for t in texts)  # the agent applied the events


async def test_agui_events_read_by_the_package_sse_parser(node_modules: Path, gw: RunningGateway) -> None:
    events: list[dict[str, Any]] = [{"type": "RUN_STARTED", "threadId": "t", "runId": "r"},
                                    *({"type": "TEXT_MESSAGE_CONTENT", "messageId": "m", "delta": f"line {i}\n"}
                                      for i in range(300)),
                                    {"type": "RUN_FINISHED", "threadId": "t", "runId": "r"}]
    await gw.append("s1", events)
    url = f"{gw.base}/api/projects/p/agentic-sessions/s1/agui/events?follow=0"
    assert await node(node_modules, "sse_parse.cjs", url) == events
