"""The pure rule tables, tested directly: agent status from a log's last run, and append-body parsing."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from gateway.api.bodies import parse_events
from gateway.api.errors import ApiError
from gateway.runner.status import AgentStatus, StatusRules

pytestmark = pytest.mark.unit

JSON, NDJSON = "application/json", "application/x-ndjson"


def status_of(events: list[dict[str, Any]]) -> AgentStatus:
    """Feed the rules newest first, as the status reader does from the end of the log."""
    rules = StatusRules()
    for event in reversed(events):
        if (status := rules.see(event)) is not None:
            return status
    return "idle"


def ev(kind: str, **fields: Any) -> dict[str, Any]:
    return {"type": kind, **fields}


@pytest.mark.parametrize(("events", "expected"), [
    ([], "idle"),
    ([ev("TEXT_MESSAGE_CONTENT")], "idle"),
    ([ev("RUN_STARTED")], "working"),
    ([ev("RUN_STARTED"), ev("TEXT_MESSAGE_CONTENT")], "working"),
    ([ev("RUN_STARTED"), ev("RUN_FINISHED")], "idle"),
    ([ev("RUN_STARTED"), ev("RUN_ERROR")], "idle"),
    ([ev("RUN_STARTED"), ev("RUN_FINISHED", outcome={"type": "interrupt"})], "waiting_input"),
    ([ev("RUN_STARTED"), ev("RUN_FINISHED", outcome={"type": "success", "pendingToolCallIds": ["c1"]})],
     "waiting_input"),
    ([ev("RUN_STARTED"), ev("RUN_FINISHED", outcome={"type": "success", "pendingToolCallIds": []})], "idle"),
    ([ev("RUN_STARTED"), ev("TOOL_CALL_START", toolCallId="c1"), ev("RUN_FINISHED")], "waiting_input"),
    ([ev("RUN_STARTED"), ev("TOOL_CALL_START", toolCallId="c1"), ev("TOOL_CALL_RESULT", toolCallId="c1"),
      ev("RUN_FINISHED")], "idle"),
    ([ev("RUN_STARTED"), ev("TOOL_CALL_START", toolCallId="c1"), ev("RUN_ERROR")], "idle"),
    ([ev("RUN_STARTED"), ev("RUN_FINISHED"), ev("RUN_STARTED")], "working"),  # only the last run counts
    ([ev("RUN_STARTED"), ev("TOOL_CALL_START", toolCallId="c1"), ev("RUN_FINISHED"), ev("RUN_STARTED"),
      ev("RUN_FINISHED")], "idle"),
])
def test_agent_status_rules(events: list[dict[str, Any]], expected: AgentStatus) -> None:
    assert status_of(events) == expected


def test_agent_status_ignores_what_is_not_an_event_object() -> None:
    rules = StatusRules()
    assert rules.see([1, 2]) is None and rules.see("RUN_STARTED") is None


@pytest.mark.parametrize(("body", "ctype", "lines"), [
    (b'{"type":"A"}', JSON, [b'{"type":"A"}']),
    (b'  {"type": "A",\r\n  "n": 1}\n', JSON, [b'{"type": "A",  "n": 1}']),
    (b'[{"type":"A"}, {"type":"B","n":1e2}]', JSON, [b'{"type":"A"}', b'{"type":"B","n":1e2}']),
    (b'{"type":"A"}\n\n{"type":"B"}\r\n', NDJSON, [b'{"type":"A"}', b'{"type":"B"}']),
    (b'{"type":"A","big":123456789012345678901234567890}', "application/vnd.x+json; charset=utf-8",
     [b'{"type":"A","big":123456789012345678901234567890}']),
])
def test_parse_events_keeps_each_event_as_sent_on_one_line(body: bytes, ctype: str, lines: list[bytes]) -> None:
    parsed = parse_events(body, ctype, 1000)
    assert parsed == lines
    assert [orjson.loads(line) for line in parsed]  # each still parses


@pytest.mark.parametrize(("body", "ctype", "status", "code"), [
    (b'{"type":"A"}', "text/plain", 415, "unsupported_media_type"),
    (b"[]", JSON, 400, "no_events"),
    (b"\n\n", NDJSON, 400, "no_events"),
    (b'{"type": 1}', JSON, 400, "bad_event"),
    (b"[1]", JSON, 400, "bad_event"),
    (b'{"type":"A"} trailing', JSON, 400, "bad_json"),
    (b'{"type":"A","v":NaN}', JSON, 400, "bad_json"),
    (b'{"type":"A","v":1e400}', JSON, 400, "bad_json"),
    (b'{"type":"A"}\n{"type":', NDJSON, 400, "bad_json"),
    (b'\xff{"type":"A"}', JSON, 400, "bad_json"),
    (b'{"type":"A","pad":"' + b"x" * 100 + b'"}', JSON, 413, "event_too_large"),
])
def test_parse_events_refusals(body: bytes, ctype: str, status: int, code: str) -> None:
    with pytest.raises(ApiError) as info:
        parse_events(body, ctype, 100)
    assert (info.value.status, info.value.code) == (status, code)
