"""`GATEWAY_DEMO=1`: a built-in writer keeps session `demo` (project `default`) going live.

So `make run` shows something real at once: a first run written in one go (history to replay),
then a new run every `RUN_INTERVAL` seconds streamed chunk by chunk. Growth is bounded: once the
log reaches `MAX_LINES` it is deleted (viewers get a reset) and the conversation starts over.
Events go through the store's append API, exactly like `POST .../events`.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator
from typing import Any

import anyio
import orjson

from gateway.clock import now_ms
from gateway.sessions.registry import Registry
from gateway.store.base import LogStore

log = logging.getLogger("gateway.demo")

PROJECT, SESSION = "default", "demo"
RUN_INTERVAL = 10.0
CHUNK_DELAY = 0.12
MAX_LINES = 20_000

Event = dict[str, Any]

_SCRIPT: tuple[tuple[str, str, dict[str, Any], Any, str], ...] = (
    ("What's the weather like in Lisbon today?", "get_weather", {"city": "Lisbon", "unit": "celsius"},
     {"city": "Lisbon", "temperature": 21, "conditions": "sunny", "wind_kph": 14},
     "It's sunny in Lisbon: 21 °C with a light breeze of 14 km/h. A good day for a walk along the river."),
    ("How many open issues does the gateway repository have?", "search_issues",
     {"repo": "agui-gateway", "state": "open"},
     {"total": 7, "labels": {"bug": 2, "enhancement": 4, "docs": 1}},
     "There are 7 open issues: 2 bugs, 4 enhancements and 1 documentation task."),
    ("Convert 250 US dollars to euros.", "convert_currency", {"amount": 250, "from": "USD", "to": "EUR"},
     {"amount": 231.75, "currency": "EUR", "rate": 0.927},
     "250 USD is about 231.75 EUR at today's rate of 0.927."),
)


def _words(text: str) -> Iterator[str]:
    """Stream text the way a model does: a few words at a time."""
    words = text.split(" ")
    for i in range(0, len(words), 3):
        yield " ".join(words[i : i + 3]) + (" " if i + 3 < len(words) else "")


def demo_run(n: int) -> list[Event]:
    """The events of run `n`: user message, tool call with arguments and result, state, answer."""
    question, tool, args, result, answer = _SCRIPT[n % len(_SCRIPT)]
    run, user, call, tool_msg, reply = f"run-{n}", f"u-{n}", f"call-{n}", f"t-{n}", f"a-{n}"
    args_text = orjson.dumps(args).decode()
    events: list[Event] = [
        {"type": "RUN_STARTED", "threadId": SESSION, "runId": run},
        {"type": "TEXT_MESSAGE_START", "messageId": user, "role": "user"},
        {"type": "TEXT_MESSAGE_CONTENT", "messageId": user, "delta": question},
        {"type": "TEXT_MESSAGE_END", "messageId": user},
        {"type": "TOOL_CALL_START", "toolCallId": call, "toolCallName": tool, "parentMessageId": reply},
        *({"type": "TOOL_CALL_ARGS", "toolCallId": call, "delta": args_text[i : i + 16]}
          for i in range(0, len(args_text), 16)),
        {"type": "TOOL_CALL_END", "toolCallId": call},
        {"type": "TOOL_CALL_RESULT", "messageId": tool_msg, "toolCallId": call, "role": "tool",
         "content": orjson.dumps(result).decode()},
        {"type": "STATE_SNAPSHOT", "snapshot": {"runs": n + 1, "lastTool": tool}},
        {"type": "TEXT_MESSAGE_START", "messageId": reply, "role": "assistant"},
        *({"type": "TEXT_MESSAGE_CONTENT", "messageId": reply, "delta": part} for part in _words(answer)),
        {"type": "TEXT_MESSAGE_END", "messageId": reply},
        {"type": "RUN_FINISHED", "threadId": SESSION, "runId": run},
    ]
    return events


async def run_demo(store: LogStore, registry: Registry) -> None:
    """Write the demo conversation until the gateway stops."""
    flog = await store.open(PROJECT, SESSION, create=True)

    async def append(events: list[Event]) -> None:
        ts = now_ms()
        await flog.append([orjson.dumps({**event, "timestamp": ts}) for event in events])
        registry.touch(PROJECT, SESSION)

    log.info("demo writer started", extra={"project": PROJECT, "session": SESSION})
    for n in itertools.count():
        if flog.lines >= MAX_LINES:
            await flog.delete()
        if flog.lines == 0:
            await append(demo_run(n))  # a fresh log gets a whole run at once: history to replay
        else:
            for event in demo_run(n):
                await append([event])
                await anyio.sleep(CHUNK_DELAY)
        await anyio.sleep(RUN_INTERVAL)
