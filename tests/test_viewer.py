"""The built-in viewer page (and examples/browser.html) in headless Chromium against real gateways."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
from ag_ui.core import RunAgentInput

from examples.fake_runner import run_events, run_input
from tests.browser.cdp import Page, chromium, open_page
from tests.conftest import free_port, run_gateway

pytestmark = [pytest.mark.anyio, pytest.mark.external]
__all__ = ["chromium"]  # the session fixture, imported so pytest finds it

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
MESSAGES = "[...document.querySelectorAll('[data-message-id]')].map(e => [e.dataset.messageId, " \
           "e.querySelector('.body').textContent])"
TOOLS = "[...document.querySelectorAll('.tool-call')].map(e => e.textContent)"


def events_of(run: RunAgentInput) -> list[dict[str, Any]]:
    """What the fake runner streams for this run, as the event objects a gateway stores."""
    return [orjson.loads(e.model_dump_json(by_alias=True)) for e in run_events(run)]


def expected_messages(run: RunAgentInput, question: str) -> list[list[str]]:
    return [[f"{run.run_id}-reply", f"Let me look that up: “{question}”."],
            [f"{run.run_id}-summary", "I found two pages that answer this."]]


async def rendered_events(page: Page) -> int:
    return int(await page.eval("document.getElementById('conversation').dataset.events"))


def at_seq(seq: int) -> str:
    """JS: the viewer has rendered up to this seq (its cursor; the compact view skips seqs)."""
    return f"(document.body.dataset.cursor || '').endsWith('-{seq}')"


async def test_viewer_lists_replays_follows_and_survives_a_restart_without_duplicates(tmp_path: Path,
                                                                                       chromium: str) -> None:
    state, port = tmp_path / "state", free_port()
    questions = ["What is a cursor?", "How do I resume?", "Does it survive restarts?"]
    runs = [run_input("chat", q) for q in questions]
    events = [events_of(run) for run in runs]
    async with open_page(chromium, tmp_path / "profile") as page:
        async with run_gateway(state, port=port) as g1:
            await g1.append("chat", events[0], project="default")
            for name in ("alpha", "beta"):
                await g1.append(name, [{"type": "RUN_STARTED", "runId": name}], project="default")
            await g1.append("elsewhere", [{"type": "RUN_STARTED"}], project="other")
            await page.goto(g1.base + "/")
            names = await page.wait_for(
                "(() => { const s = [...document.querySelectorAll('#sessions [data-session]')]"
                ".map(b => b.dataset.session); return s.length >= 3 && s; })()")
            assert names == ["alpha", "beta", "chat"]

            await page.eval("document.querySelector('[data-session=\"chat\"]').click()")
            await page.wait_for("document.getElementById('status').dataset.state === 'live'")
            assert await page.eval(at_seq(len(events[0])))
            assert await page.eval(MESSAGES) == expected_messages(runs[0], questions[0])
            tools = await page.eval(TOOLS)
            assert tools == [f'search_docs({{"query":"{questions[0]}","limit":3}})'
                             '→ {"hits": ["docs/client.md", "docs/viewer.md"]}']
            assert await page.eval("location.hash") == "#/default/chat"

            await g1.append("chat", events[1], project="default")  # live
            await page.wait_for(at_seq(len(events[0]) + len(events[1])))
            g1.gateway.begin_shutdown()  # what SIGTERM does: streams close with 1001
        await page.wait_for("document.getElementById('status').dataset.state === 'reconnecting'")
        async with run_gateway(state, port=port) as g2:
            await g2.append("chat", events[2], project="default")
            total = sum(len(e) for e in events)
            await page.wait_for(f"{at_seq(total)} && document.getElementById('status').dataset.state === 'live'")
            assert await page.eval(MESSAGES) == [m for run, q in zip(runs, questions, strict=True)
                                                 for m in expected_messages(run, q)]
            assert len(await page.eval(TOOLS)) == 3
            assert await page.eval("getComputedStyle(document.getElementById('replay')).display") == "none"
            png = await page.screenshot()
    assert png.startswith(b"\x89PNG")
    if target := os.environ.get("VIEWER_SCREENSHOT"):  # refreshes docs/viewer.png when asked to
        await anyio.Path(target).write_bytes(png)


async def test_viewer_opens_the_compact_view_and_switches_to_raw(tmp_path: Path, chromium: str) -> None:
    questions = ["What is compact?", "And raw?"]
    runs = [run_input("chat", q) for q in questions]
    events = [e for run in runs for e in events_of(run)]
    expected = [m for run, q in zip(runs, questions, strict=True) for m in expected_messages(run, q)]
    async with run_gateway(tmp_path / "state") as g, open_page(chromium, tmp_path / "profile") as page:
        await g.append("chat", events, project="default")
        await page.goto(g.base + "/#/default/chat")
        await page.wait_for(f"{at_seq(len(events))} && document.getElementById('status').dataset.state === 'live'")
        assert await page.eval("document.body.dataset.view") == "compact"
        compact = await rendered_events(page)
        assert compact < len(events)
        assert await page.eval(MESSAGES) == expected
        assert len(await page.eval(TOOLS)) == 2
        await page.eval("document.getElementById('view-switch').click()")
        await page.wait_for(f"document.body.dataset.view === 'raw' && {at_seq(len(events))} && "
                            "document.getElementById('status').dataset.state === 'live'")
        assert await rendered_events(page) == len(events)
        assert await page.eval(MESSAGES) == expected
        await page.goto(g.base + "/#/default/chat")  # the choice is remembered
        await page.wait_for(f"document.body.dataset.view === 'raw' && {at_seq(len(events))}")


async def test_viewer_pages_sessions_and_merges_snapshots_by_message_id(
    tmp_path: Path, chromium: str
) -> None:
    async with run_gateway(tmp_path / "state") as g, open_page(chromium, tmp_path / "profile") as page:
        for i in range(22):
            await g.append(f"s{i:02d}", [{"type": "RUN_STARTED"}], project="default")
        await g.append("s00", [
            {"type": "TEXT_MESSAGE_START", "messageId": "m1", "role": "user"},
            {"type": "TEXT_MESSAGE_CONTENT", "messageId": "m1", "delta": "hi"},
            {"type": "TEXT_MESSAGE_END", "messageId": "m1"},
            {"type": "MESSAGES_SNAPSHOT", "messages": [
                {"id": "m1", "role": "user", "content": "hi"},
                {"id": "m2", "role": "assistant", "content": "hello there", "toolCalls": [
                    {"id": "c1", "type": "function",
                     "function": {"name": "lookup", "arguments": '{"q":1}'}}]},
                {"id": "m3", "role": "tool", "toolCallId": "c1", "content": "42"},
            ]},
        ], project="default")
        await page.goto(g.base + "/")
        count = "document.querySelectorAll('#sessions [data-session]').length"
        assert await page.wait_for(f"{count} === 20 && {count}")
        await page.eval("document.getElementById('more').click()")
        await page.wait_for(f"{count} === 22")
        assert await page.eval("document.getElementById('more').hidden")

        await page.goto(g.base + "/#/default/s00")
        await page.wait_for("document.getElementById('status').dataset.state === 'live'")
        assert await page.eval(MESSAGES) == [["m1", "hi"], ["m2", "hello there"]]
        assert await page.eval(TOOLS) == ['lookup({"q":1})→ 42']


async def test_browser_example_resumes_with_its_cursor(tmp_path: Path, chromium: str) -> None:
    """examples/browser.html opened from disk (origin "null", allowed for this gateway)."""
    state, port = tmp_path / "state", free_port()
    async with open_page(chromium, tmp_path / "profile") as page:
        async with run_gateway(state, port=port, allowed_origins=("null",)) as g1:
            await g1.append("chat", [{"type": "CUSTOM", "value": i} for i in range(5)], project="default")
            query = f"gateway=ws://127.0.0.1:{port}&project=default&session=chat"
            await page.goto(f"{(EXAMPLES / 'browser.html').as_uri()}?{query}")
            await page.wait_for("document.querySelectorAll('#log li').length === 5")
            g1.gateway.begin_shutdown()
        async with run_gateway(state, port=port, allowed_origins=("null",)) as g2:
            await g2.append("chat", [{"type": "CUSTOM", "value": i} for i in range(5, 8)], project="default")
            await page.wait_for("document.querySelectorAll('#log li').length === 8")
            await anyio.sleep(0.3)  # room for a duplicate to show up, were there one
            lines = await page.eval("[...document.querySelectorAll('#log li')].map(li => li.textContent)")
    assert [json.loads(line.split(" ", 1)[1])["value"] for line in lines] == list(range(8))
