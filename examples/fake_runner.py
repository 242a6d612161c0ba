"""A fake AG-UI runner: answers `POST /` (a RunAgentInput) with a realistic run streamed over SSE.

It also speaks the rest of the gateway's runner contract (docs/runs.md): `POST /interrupt` with
`{"runId"}` ends that run early with a cancelled RUN_FINISHED (404 for a run it is not running),
and `GET /capabilities` describes it.

    python examples/fake_runner.py --port 8001        # or: uvicorn --factory examples.fake_runner:build_app

The run has what real agents send: RUN_STARTED, an assistant message in TEXT_MESSAGE_* chunks, a
tool call with streamed arguments and its result, a STATE_SNAPSHOT, a closing TEXT_MESSAGE_CHUNK
and RUN_FINISHED. Events are built and encoded with the `ag-ui-protocol` package. Importable:
`build_app()` returns the ASGI app (for tests of a runs proxy), `run_events()` the events alone.
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from collections.abc import AsyncIterator, Sequence

import anyio
import uvicorn
from ag_ui.core import (
    BaseEvent,
    RunAgentInput,
    RunFinishedCancelledOutcome,
    RunFinishedEvent,
    RunStartedEvent,
    StateSnapshotEvent,
    TextMessageChunkEvent,
    TextMessageContentEvent,
    TextMessageEndEvent,
    TextMessageStartEvent,
    ToolCallArgsEvent,
    ToolCallEndEvent,
    ToolCallResultEvent,
    ToolCallStartEvent,
)
from ag_ui.encoder import EventEncoder
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route


def _last_user_text(run: RunAgentInput) -> str:
    for message in reversed(run.messages):
        if message.role == "user" and isinstance(message.content, str):
            return message.content
    return "Hello!"


def run_events(run: RunAgentInput) -> list[BaseEvent]:
    """The events of one run answering the last user message (ids derived from the run id)."""
    question = _last_user_text(run)
    reply, tool_msg, call = f"{run.run_id}-reply", f"{run.run_id}-tool", f"{run.run_id}-call"
    args = json.dumps({"query": question, "limit": 3})
    intro = f"Let me look that up: “{question}”."
    return [
        RunStartedEvent(thread_id=run.thread_id, run_id=run.run_id),
        TextMessageStartEvent(message_id=reply, role="assistant"),
        *(TextMessageContentEvent(message_id=reply, delta=intro[i : i + 12])
          for i in range(0, len(intro), 12)),
        TextMessageEndEvent(message_id=reply),
        ToolCallStartEvent(tool_call_id=call, tool_call_name="search_docs", parent_message_id=reply),
        *(ToolCallArgsEvent(tool_call_id=call, delta=args[i : i + 10]) for i in range(0, len(args), 10)),
        ToolCallEndEvent(tool_call_id=call),
        ToolCallResultEvent(message_id=tool_msg, tool_call_id=call, role="tool",
                            content=json.dumps({"hits": ["docs/client.md", "docs/viewer.md"]})),
        StateSnapshotEvent(snapshot={"searches": 1, "lastQuery": question}),
        TextMessageChunkEvent(message_id=f"{run.run_id}-summary", role="assistant",
                              delta="I found two pages that answer this."),
        RunFinishedEvent(thread_id=run.thread_id, run_id=run.run_id),
    ]


def run_input(thread_id: str, question: str) -> RunAgentInput:
    """A RunAgentInput with one user message (for tests and the command line)."""
    return RunAgentInput.model_validate({
        "threadId": thread_id, "runId": f"run-{uuid.uuid4().hex[:8]}", "state": {}, "tools": [],
        "context": [], "forwardedProps": {}, "messages": [{"id": "u1", "role": "user", "content": question}],
    })


def build_app(delay: float = 0.05) -> Starlette:
    """The runner as an ASGI app; `delay` seconds between events makes the stream look live."""
    encoder = EventEncoder()
    interrupts: dict[str, anyio.Event] = {}  # runs in progress

    async def run(request: Request) -> Response:
        try:
            body = RunAgentInput.model_validate_json(await request.body())
        except ValueError as exc:
            return JSONResponse({"error": {"code": "bad_request", "message": str(exc)}}, status_code=400)
        stop = interrupts[body.run_id] = anyio.Event()

        async def stream() -> AsyncIterator[str]:
            try:
                for event in run_events(body):
                    if stop.is_set():
                        yield encoder.encode(RunFinishedEvent(thread_id=body.thread_id, run_id=body.run_id,
                                                              outcome=RunFinishedCancelledOutcome()))
                        return
                    yield encoder.encode(event)
                    with anyio.move_on_after(delay):
                        await stop.wait()
            finally:
                interrupts.pop(body.run_id, None)

        return StreamingResponse(stream(), media_type=encoder.get_content_type())

    async def interrupt(request: Request) -> Response:
        run_id = (await request.json()).get("runId")
        if run_id not in interrupts:
            return JSONResponse({"error": {"code": "unknown_run", "message": f"no run {run_id!r}"}}, status_code=404)
        interrupts[run_id].set()
        return JSONResponse({"runId": run_id, "interrupted": True})

    async def capabilities(request: Request) -> Response:
        return JSONResponse({"name": "fake-runner", "interrupt": True, "concurrentRuns": False})

    return Starlette(routes=[
        Route("/", run, methods=["POST"]),
        Route("/interrupt", interrupt, methods=["POST"]),
        Route("/capabilities", capabilities, methods=["GET"]),
    ])


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description="Serve a fake AG-UI runner over SSE.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--delay", type=float, default=0.05, help="seconds between events")
    args = parser.parse_args(argv)
    uvicorn.run(build_app(args.delay), host=args.host, port=args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
