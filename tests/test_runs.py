"""Runs through a real gateway to real runners (the example fake runner and failing variants)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
import websockets
from ag_ui.core import CustomEvent, RunFinishedEvent, RunStartedEvent
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

from examples.fake_runner import build_app
from gateway.runner.client import ERROR_BODY_BYTES, RetryPolicy
from tests.conftest import RunningGateway, free_port, run_gateway
from tests.runner_helpers import (
    ENCODER,
    counting_capabilities,
    cut_runner,
    error_runner,
    parse_sse,
    run_body,
    serve_runner,
    session_url,
    set_runner_port,
    stored,
    wait_until_done,
)

pytestmark = [pytest.mark.anyio, pytest.mark.server]

TEMPLATE = "http://127.0.0.1:{port}/"
FAST_RETRY = RetryPolicy(tries=3, first_delay=0.01, factor=1.5, max_delay=0.02)


@pytest.fixture
async def gw(tmp_path: Path) -> AsyncIterator[RunningGateway]:
    """A gateway whose runner address is 127.0.0.1 with the port from each session's meta.json."""
    async with run_gateway(tmp_path / "state", runner_url=TEMPLATE) as running:
        yield running


async def start(gw: RunningGateway, session: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    resp = await gw.http.post(session_url(gw, session, "/runs"), json=body or run_body())
    assert resp.status_code == 202, resp.text
    result: dict[str, Any] = resp.json()
    return result


async def run_started(gw: RunningGateway, session: str, run_id: str) -> None:
    """Wait for the run's RUN_STARTED in the log: from then on the runner knows the run."""
    with anyio.fail_after(30):
        while not any(e.get("runId") == run_id and e["type"] == "RUN_STARTED" for e in stored(gw, session)):
            await anyio.sleep(0.01)


async def watch(url: str, seen: list[dict[str, Any]], ready: anyio.Event) -> None:
    """A WebSocket watcher: collects events until a run ends; `ready` once it is live."""
    async with websockets.connect(url) as ws:
        async for frame in ws:
            for line in str(frame).split("\n"):
                msg = orjson.loads(line)
                if msg.get("control") == "live":
                    ready.set()
                seen.extend(msg.get("events", []))
            if seen and seen[-1]["type"] in ("RUN_FINISHED", "RUN_ERROR"):
                return


async def test_run_reaches_two_watchers_live_and_the_log_in_order(gw: RunningGateway) -> None:
    async with serve_runner(build_app(delay=0.01)) as port:
        set_runner_port(gw.settings.state_dir, "s1", port)
        watchers: list[list[dict[str, Any]]] = [[], []]
        async with anyio.create_task_group() as tg:
            for seen in watchers:
                ready = anyio.Event()
                tg.start_soon(watch, gw.events_url("s1", ws=True), seen, ready)
                await ready.wait()  # both are live before the run starts: everything they get is live
            body = run_body("Where is the index?")
            result = await start(gw, "s1", body)
        assert result == {"runId": body["runId"], "threadId": "t1", "cursor": None}  # the log was empty
        events = stored(gw, "s1")
        assert watchers[0] == watchers[1] == events
        assert events[0] == {"type": "MESSAGES_SNAPSHOT", "messages": body["messages"]}
        assert [e["type"] for e in events[1:3]] == ["RUN_STARTED", "TEXT_MESSAGE_START"]
        assert events[-1] == {"type": "RUN_FINISHED", "threadId": "t1", "runId": body["runId"]}
        status = (await gw.http.get(session_url(gw, "s1"))).json()
        assert status["agentStatus"] == "idle"

        # The next run's cursor is the position just before its first event (its user message).
        history = [*body["messages"], {"id": "a1", "role": "assistant", "content": "Answer."}]
        second = await start(gw, "s1", run_body("And the epoch?", history=history))
        assert second["cursor"] == f"{status['epoch']}-{len(events)}"
        after = (await wait_until_done(gw, "s1"))[len(events):]
        assert after[0]["type"] == "MESSAGES_SNAPSHOT"
        assert [m["content"] for m in after[0]["messages"]] == ["And the epoch?"]  # only the new message


async def test_runner_down_then_up_is_retried(gw: RunningGateway, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gateway.runs")
    gw.gateway.runs.retry = RetryPolicy(tries=1000, first_delay=0.01, factor=1.5, max_delay=0.02)
    port = free_port()
    set_runner_port(gw.settings.state_dir, "s1", port)
    await start(gw, "s1")
    with anyio.fail_after(30):
        while not any(r.getMessage() == "runner not reachable, retrying" for r in caplog.records):
            await anyio.sleep(0.01)
    async with serve_runner(build_app(delay=0), port):
        events = await wait_until_done(gw, "s1")
    assert [e["type"] for e in events[:2]] == ["MESSAGES_SNAPSHOT", "RUN_STARTED"]
    assert events[-1]["type"] == "RUN_FINISHED"


async def test_runner_down_for_good_persists_run_error(gw: RunningGateway) -> None:
    gw.gateway.runs.retry = FAST_RETRY
    set_runner_port(gw.settings.state_dir, "s1", free_port())
    await start(gw, "s1")
    events = await wait_until_done(gw, "s1")
    assert [e["type"] for e in events] == ["MESSAGES_SNAPSHOT", "RUN_ERROR"]
    assert events[-1]["code"] == "runner_unavailable"
    assert "after 3 tries" in events[-1]["message"]


@pytest.mark.parametrize("abort", [False, True], ids=["body-ends", "connection-breaks"])
async def test_runner_stream_cut_mid_run_gets_a_run_error(gw: RunningGateway, abort: bool) -> None:
    async with serve_runner(cut_runner(abort=abort)) as port:
        set_runner_port(gw.settings.state_dir, "s1", port)
        await start(gw, "s1")
        events = await wait_until_done(gw, "s1")
    assert [e["type"] for e in events] == ["MESSAGES_SNAPSHOT", "RUN_STARTED", "TEXT_MESSAGE_START",
                                          "TEXT_MESSAGE_CONTENT", "RUN_ERROR"]
    assert events[-1]["code"] == "runner_stream_cut"
    assert (await gw.http.get(session_url(gw, "s1"))).json()["agentStatus"] == "idle"


async def test_runner_error_body_is_capped(gw: RunningGateway) -> None:
    page = "<html>" + "x" * 100_000
    async with serve_runner(error_runner(500, page)) as port:
        set_runner_port(gw.settings.state_dir, "s1", port)
        await start(gw, "s1")
        events = await wait_until_done(gw, "s1")
    error = events[-1]
    assert error["type"] == "RUN_ERROR" and error["code"] == "runner_error"
    assert error["message"] == "runner answered 500: " + page[:ERROR_BODY_BYTES]


async def test_one_run_at_a_time_and_interrupt_is_forwarded(gw: RunningGateway) -> None:
    async with serve_runner(build_app(delay=60)) as port:  # each event waits for an interrupt
        set_runner_port(gw.settings.state_dir, "s1", port)
        first = await start(gw, "s1")
        resp = await gw.http.post(session_url(gw, "s1", "/runs"), json=run_body())
        assert resp.status_code == 409
        assert resp.json()["error"]["code"] == "run_in_progress"
        assert first["runId"] in resp.json()["error"]["message"]
        assert (await gw.http.get(session_url(gw, "s1"))).json()["agentStatus"] == "working"

        unknown = await gw.http.post(session_url(gw, "s1", "/runs/nope/interrupt"))
        assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "unknown_run"
        await run_started(gw, "s1", first["runId"])
        resp = await gw.http.post(session_url(gw, "s1", f"/runs/{first['runId']}/interrupt"))
        assert resp.status_code == 202, resp.text
        events = await wait_until_done(gw, "s1")
        assert events[-1]["outcome"] == {"type": "cancelled"}
        assert events[-1]["runId"] == first["runId"]
        third = await start(gw, "s1")  # the session is free again
        await run_started(gw, "s1", third["runId"])
        await gw.http.post(session_url(gw, "s1", f"/runs/{third['runId']}/interrupt"))
        await wait_until_done(gw, "s1")


RUNS = 130  # past httpx's default pool of 100 connections


async def test_many_concurrent_runs_all_start_at_once(gw: RunningGateway) -> None:
    """Every run holds its runner connection while it streams: 130 runs of 130 sessions are all
    streaming at the same time, none held back by a connection pool."""
    streaming, release = 0, anyio.Event()
    every = anyio.Event()

    async def run(request: Request) -> StreamingResponse:
        body = await request.json()

        async def events() -> AsyncIterator[str]:
            nonlocal streaming
            ids = {"threadId": body["threadId"], "runId": body["runId"]}
            yield ENCODER.encode(RunStartedEvent(thread_id=ids["threadId"], run_id=ids["runId"]))
            streaming += 1
            if streaming == RUNS:
                every.set()
            await release.wait()
            yield ENCODER.encode(RunFinishedEvent(thread_id=ids["threadId"], run_id=ids["runId"]))

        return StreamingResponse(events(), media_type="text/event-stream")

    async with serve_runner(Starlette(routes=[Route("/", run, methods=["POST"])])) as port:
        for i in range(RUNS):
            set_runner_port(gw.settings.state_dir, f"r{i}", port)
        async with anyio.create_task_group() as tg:
            for i in range(RUNS):
                tg.start_soon(start, gw, f"r{i}")
        with anyio.fail_after(60):  # a bound for a stuck test, not a timing check
            await every.wait()
        assert streaming == RUNS
        release.set()
        for i in range(RUNS):
            events = await wait_until_done(gw, f"r{i}")
            assert [e["type"] for e in events] == ["MESSAGES_SNAPSHOT", "RUN_STARTED", "RUN_FINISHED"]


async def test_events_a_runner_sends_while_an_append_is_made_durable_share_the_next_append(tmp_path: Path) -> None:
    """The runner's stream is read ahead of the appends: 300 events sent at once, under
    fsync=always, are stored in order in far fewer appends than events."""

    async def run(request: Request) -> StreamingResponse:
        body = await request.json()
        ids = {"thread_id": body["threadId"], "run_id": body["runId"]}

        async def events() -> AsyncIterator[str]:
            yield ENCODER.encode(RunStartedEvent(**ids))
            for n in range(300):
                yield ENCODER.encode(CustomEvent(name="tick", value=n))
            yield ENCODER.encode(RunFinishedEvent(**ids))

        return StreamingResponse(events(), media_type="text/event-stream")

    async with run_gateway(tmp_path / "state", runner_url=TEMPLATE, fsync="always") as g, \
            serve_runner(Starlette(routes=[Route("/", run, methods=["POST"])])) as port:
        set_runner_port(g.settings.state_dir, "s", port)
        appends = g.gateway.metrics.append_seconds
        before = _count(appends)
        await start(g, "s")
        events = await wait_until_done(g, "s")
        taken = _count(appends) - before
    assert [e["value"] for e in events if e["type"] == "CUSTOM"] == list(range(300))
    assert taken <= 30, f"{taken} appends for 302 events"


def _count(histogram: Any) -> float:
    return next(s.value for metric in histogram.collect() for s in metric.samples if s.name.endswith("_count"))


async def test_runner_down_interrupt_is_502(gw: RunningGateway) -> None:
    set_runner_port(gw.settings.state_dir, "s1", free_port())
    resp = await gw.http.post(session_url(gw, "s1", "/runs/r1/interrupt"))
    assert resp.status_code == 502 and resp.json()["error"]["code"] == "runner_unavailable"


async def test_sse_variant_streams_the_run_from_the_log(gw: RunningGateway) -> None:
    async with serve_runner(build_app(delay=0.01)) as port:
        set_runner_port(gw.settings.state_dir, "s1", port)
        await gw.append("s1", [{"type": "CUSTOM", "name": "before", "value": 1}])
        body = run_body()
        headers = {"accept": "text/event-stream"}
        async with gw.http.stream("POST", session_url(gw, "s1", "/runs"), json=body, headers=headers) as resp:
            assert resp.status_code == 200
            assert resp.headers["content-type"].startswith("text/event-stream")
            raw = await resp.aread()
        assert raw.startswith(b"retry: 1000\n\n")
        frames = parse_sse(raw)
        lines = (gw.settings.state_dir / "sessions/s1/agui-events.jsonl").read_bytes().splitlines()
        epoch = (await gw.http.get(session_url(gw, "s1"))).json()["epoch"]
        # From the runner's first event (after the stored user message) to RUN_FINISHED, byte for byte.
        assert frames == [(f"{epoch}-{seq}", lines[seq - 1]) for seq in range(3, len(lines) + 1)]
        assert orjson.loads(frames[0][1])["type"] == "RUN_STARTED"
        assert orjson.loads(frames[-1][1])["type"] == "RUN_FINISHED"


async def test_sse_client_leaving_does_not_stop_the_run(gw: RunningGateway) -> None:
    async with serve_runner(build_app(delay=0.02)) as port:
        set_runner_port(gw.settings.state_dir, "s1", port)
        headers = {"accept": "text/event-stream"}
        body = run_body()
        async with gw.http.stream("POST", session_url(gw, "s1", "/runs"), json=body, headers=headers) as resp:
            async for chunk in resp.aiter_bytes():
                if b"RUN_STARTED" in chunk:
                    break  # leave mid-run
        events = await wait_until_done(gw, "s1")
    assert events[-1] == {"type": "RUN_FINISHED", "threadId": "t1", "runId": body["runId"]}


async def test_feedback_is_stored_as_meta(gw: RunningGateway) -> None:
    await gw.append("s1", [{"type": "RUN_STARTED", "threadId": "t", "runId": "r"}])
    feedback = {"metaType": "thumbs_up", "messageId": "m1", "comment": "clear answer"}
    resp = await gw.http.post(session_url(gw, "s1", "/feedback"), json=feedback)
    assert resp.status_code == 201, resp.text
    event = stored(gw, "s1")[-1]
    assert resp.json()["cursor"].endswith("-2")
    assert event["type"] == "META" and event["metaType"] == "thumbs_up" and event["payload"] == feedback
    assert isinstance(event["timestamp"], int)
    for bad in (b"[1]", b"not json", b'{"metaType": 3}'):
        resp = await gw.http.post(session_url(gw, "s1", "/feedback"), content=bad,
                                  headers={"content-type": "application/json"})
        assert resp.status_code == 400, bad
    assert len(stored(gw, "s1")) == 2


async def test_capabilities_are_proxied_and_cached(gw: RunningGateway) -> None:
    hits: list[int] = []
    async with serve_runner(counting_capabilities(hits)) as port:
        set_runner_port(gw.settings.state_dir, "s1", port)
        set_runner_port(gw.settings.state_dir, "s2", port)
        for _ in range(3):
            resp = await gw.http.get(session_url(gw, "s1", "/capabilities"))
            assert resp.status_code == 200 and resp.json() == {"n": 1}
        compat = f"{gw.base}/api/projects/p/agentic-sessions/s1/agui/capabilities"
        assert (await gw.http.get(compat)).json() == {"n": 1}
        assert (await gw.http.get(session_url(gw, "s2", "/capabilities"))).json() == {"n": 2}  # per session
    assert len(hits) == 2


async def test_bad_run_input_is_400_and_unknown_session_404(gw: RunningGateway) -> None:
    resp = await gw.http.post(session_url(gw, "s1", "/runs"), json={"threadId": "t"})
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "bad_run_input"
    for run_id in ("", "r" * 257):  # a run that no interrupt route could name
        resp = await gw.http.post(session_url(gw, "s1", "/runs"), json={**run_body(), "runId": run_id})
        assert resp.status_code == 400 and resp.json()["error"]["code"] == "bad_run_id", resp.text
    resp = await gw.http.get(session_url(gw, "s1"))
    assert resp.status_code == 404  # nothing was started or stored
    resp = await gw.http.get(session_url(gw, "nosuch", "/capabilities"))
    assert resp.status_code == 404


async def test_a_message_with_an_integer_beyond_64_bits_is_stored_as_sent(gw: RunningGateway) -> None:
    """Found by schemathesis: the stored user message was encoded with orjson, which refuses such
    integers (500); appends keep them, so runs do too."""
    async with serve_runner(build_app(delay=0)) as port:
        set_runner_port(gw.settings.state_dir, "big", port)
        body = run_body()
        body["messages"][0]["n"] = 2**65 + 1
        await start(gw, "big", body)
        events = await wait_until_done(gw, "big")
    assert events[0]["type"] == "MESSAGES_SNAPSHOT" and events[-1]["type"] == "RUN_FINISHED"
    raw = (gw.settings.state_dir / "sessions" / "big" / "agui-events.jsonl").read_bytes().split(b"\n")[0]
    assert b'"n":36893488147419103233}' in raw


async def test_shutdown_ends_a_run_with_run_error(tmp_path: Path) -> None:
    state = tmp_path / "state"
    async with serve_runner(build_app(delay=60)) as port:
        set_runner_port(state, "s1", port)
        async with run_gateway(state, runner_url=TEMPLATE) as running:
            await run_started(running, "s1", (await start(running, "s1"))["runId"])
        events = stored(running, "s1")
    assert events[-1]["type"] == "RUN_ERROR" and events[-1]["code"] == "gateway_shutdown"


@pytest.mark.parametrize(("events", "status"), [
    ([], "waiting_input"),  # the older run alone: its tool call was never answered
    ([{"type": "RUN_STARTED", "threadId": "t", "runId": "r"}], "working"),
    ([{"type": "RUN_STARTED", "threadId": "t", "runId": "r"},
      {"type": "RUN_FINISHED", "threadId": "t", "runId": "r"}], "idle"),
    ([{"type": "RUN_STARTED", "threadId": "t", "runId": "r"}, {"type": "RUN_ERROR", "message": "x"}], "idle"),
    ([{"type": "RUN_STARTED", "threadId": "t", "runId": "r"},
      {"type": "TOOL_CALL_START", "toolCallId": "c1", "toolCallName": "ask"},
      {"type": "TOOL_CALL_END", "toolCallId": "c1"},
      {"type": "RUN_FINISHED", "threadId": "t", "runId": "r"}], "waiting_input"),
    ([{"type": "RUN_STARTED", "threadId": "t", "runId": "r"},
      {"type": "TOOL_CALL_START", "toolCallId": "c1", "toolCallName": "ask"},
      {"type": "TOOL_CALL_RESULT", "toolCallId": "c1", "messageId": "m", "content": "ok"},
      {"type": "RUN_FINISHED", "threadId": "t", "runId": "r"}], "idle"),
    ([{"type": "RUN_STARTED", "threadId": "t", "runId": "r"},
      {"type": "RUN_FINISHED", "threadId": "t", "runId": "r",
       "outcome": {"type": "interrupt", "interrupts": [{"id": "i1", "reason": "approve"}]}}], "waiting_input"),
    ([{"type": "RUN_STARTED", "threadId": "t", "runId": "r"},
      {"type": "RUN_FINISHED", "threadId": "t", "runId": "r",
       "outcome": {"type": "success", "pendingToolCallIds": ["c9"]}}], "waiting_input"),
], ids=["older-run-only", "started", "finished", "errored", "pending-tool", "answered-tool", "interrupt",
        "pending-ids"])
async def test_agent_status_rules(gw: RunningGateway, events: list[dict[str, Any]], status: str) -> None:
    # An earlier, much longer run (several read chunks) with an unanswered tool call: it must not
    # change the answer about the last run, which proves the read stops at the last RUN_STARTED.
    noise = [{"type": "RUN_STARTED", "threadId": "t", "runId": "old"},
             {"type": "TOOL_CALL_START", "toolCallId": "old", "toolCallName": "x"},
             *({"type": "TEXT_MESSAGE_CONTENT", "messageId": "m", "delta": "y" * 500} for _ in range(400)),
             {"type": "RUN_FINISHED", "threadId": "t", "runId": "old"}]
    await gw.append("s1", noise + events)
    resp = await gw.http.get(session_url(gw, "s1"))
    assert resp.json()["agentStatus"] == status
    assert (await gw.http.get(session_url(gw, "s1"))).json()["agentStatus"] == status  # cached answer


async def test_status_of_a_huge_run_reads_backwards_through_many_chunks(gw: RunningGateway) -> None:
    body = [{"type": "RUN_STARTED", "threadId": "t", "runId": "r"},
            *({"type": "TEXT_MESSAGE_CONTENT", "messageId": "m", "delta": f"{i:06d}" * 50} for i in range(3000))]
    await gw.append("s1", body)
    assert (await gw.http.get(session_url(gw, "s1"))).json()["agentStatus"] == "working"
    await gw.append("s1", [{"type": "RUN_FINISHED", "threadId": "t", "runId": "r"}])
    assert (await gw.http.get(session_url(gw, "s1"))).json()["agentStatus"] == "idle"


async def test_runner_http_error_503_is_retried_then_reported(gw: RunningGateway) -> None:
    gw.gateway.runs.retry = FAST_RETRY
    async with serve_runner(error_runner(503, "starting")) as port:
        set_runner_port(gw.settings.state_dir, "s1", port)
        await start(gw, "s1")
        events = await wait_until_done(gw, "s1")
    assert events[-1]["message"] == "runner answered 503: starting"


async def test_draining_gateway_refuses_runs(gw: RunningGateway) -> None:
    gw.gateway.begin_shutdown()
    resp = await gw.http.post(session_url(gw, "s1", "/runs"), json=run_body())
    assert resp.status_code == 503


async def test_sse_variant_sends_heartbeats_while_the_runner_is_quiet(tmp_path: Path) -> None:
    async with run_gateway(tmp_path / "state", runner_url=TEMPLATE, heartbeat_interval=0.05) as gw, \
            serve_runner(build_app(delay=0.2)) as port:
        set_runner_port(gw.settings.state_dir, "s1", port)
        headers = {"accept": "text/event-stream"}
        async with gw.http.stream("POST", session_url(gw, "s1", "/runs"), json=run_body(), headers=headers) as resp:
            raw = await resp.aread()
    assert b": heartbeat\n\n" in raw
    assert orjson.loads(parse_sse(raw)[-1][1])["type"] == "RUN_FINISHED"
