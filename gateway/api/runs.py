"""Runs, interrupts, feedback and capabilities (PROTOCOL §3), on top of `gateway.runner`.

The handlers here also serve the compatibility routes (`gateway.compat`), which differ only in
paths and in a few response shapes.
"""

from __future__ import annotations

from typing import Any

import orjson
import pydantic
from ag_ui.core import RunAgentInput
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from gateway.api.access import READ, WRITE, SessionAccess, session_access
from gateway.api.errors import ApiError, bad_request
from gateway.api.events import SESSION_PARAMS, read_body, stream_events
from gateway.api.guard import require_json
from gateway.api.spec import SSE, Link, answer, json_answer, nullable, obj, operation, pydantic_schemas, ref
from gateway.clock import now_ms
from gateway.runner.hooks import Caller
from gateway.runner.runs import Run
from gateway.runtime import gateway_of
from gateway.sessions.registry import TooManyConnections
from gateway.store.cursor import Cursor, format_cursor
from gateway.stream.framing import SseEncoder
from gateway.stream.reader import LogReader
from gateway.transports.http_stream import EventStreamResponse

SESSION = "/v1/projects/{project}/sessions/{session}"
FEEDBACK_BYTES = 64 * 1024
MAX_ID = 256
RUN_ID = {"type": "string", "minLength": 1, "maxLength": MAX_ID}
RUN_INPUT, RUN_SCHEMAS = pydantic_schemas(RunAgentInput)
RUN_SCHEMAS["RunAgentInput"]["properties"]["runId"] |= RUN_ID  # what the interrupt routes can name
RUN_ERRORS = (409, 502, 507)
"""A run already going on the session, a runner that fails, a full disk."""
FEEDBACK = obj(metaType={**RUN_ID, "description": "default feedback"})
CURSOR_LINK = {"ReadAfter": Link(stream_events, {**SESSION_PARAMS, "query.after": "$response.body#/cursor"},
                                 "the events stored after this answer")}


async def start_run(request: Request) -> Run:
    """Validate the `RunAgentInput` body and start the run (its user messages already persisted)."""
    access = await session_access(request, WRITE)
    require_json(request)
    body = await read_body(request, access.gw.settings.max_body_bytes)
    try:
        run_input = RunAgentInput.model_validate_json(body)
    except pydantic.ValidationError as exc:
        raise bad_request(f"body is not an AG-UI RunAgentInput: {exc}", "bad_run_input") from None
    check_run_id(run_input.run_id)
    flog = await access.log(create=True)
    caller = Caller(access.user, request.headers.get("authorization"))
    return await access.gw.runs.start(access.project, access.session, flog, run_input, caller)


INTERRUPTED = json_answer("forwarded to the runner", obj(("runId", "interrupted"), runId=RUN_ID,
                                                         interrupted={"const": True}))


@operation(access="session", path={"run": RUN_ID}, errors=(502,), answers={202: INTERRUPTED})
async def post_interrupt(request: Request) -> Response:
    return await interrupt_run(await session_access(request, WRITE), request.path_params["run"])


@operation(access="session", body={"application/json": RUN_INPUT}, components=RUN_SCHEMAS, errors=RUN_ERRORS,
           answers={202: json_answer("started; its events follow `cursor` (null: the log's start)", obj(
               ("runId", "threadId", "cursor"), runId=RUN_ID, threadId={"type": "string"},
               cursor=nullable(ref("Cursor")))),
               200: answer("with `Accept: text/event-stream`: the run's events until it ends", {SSE: ref("SseEvent")})},
           links={**CURSOR_LINK, "Interrupt": Link(
               post_interrupt, {**SESSION_PARAMS, "path.run": "$response.body#/runId"}, "interrupt this run")})
async def post_run(request: Request) -> Response | EventStreamResponse:
    """POST .../runs: 202 at once, or with `Accept: text/event-stream` the run's events as SSE.

    The SSE variant is the session's reader from the run's first runner event, until the run's
    RUN_FINISHED/RUN_ERROR (or until the run ends without one the store could keep): it reads the
    log, not a copy of the runner's stream, so its client sees exactly what was persisted, with
    cursors it can resume from on the events route.
    """
    run = await start_run(request)
    if "text/event-stream" not in request.headers.get("accept", ""):
        return JSONResponse({"runId": run.run_id, "threadId": run.thread_id, "cursor": run.cursor}, status_code=202)
    gw = gateway_of(request)
    reader = LogReader(run.log, until=run)
    await reader.seek(Cursor(run.log.epoch, run.events_after) if run.events_after else None)
    try:
        conn = gw.registry.connect(run.project, run.session, "sse")
    except TooManyConnections as exc:
        raise ApiError(503, "too_many_connections", f"{exc}; the run goes on, watch it on the events route") from exc
    return EventStreamResponse(gw.streams, conn, reader, SseEncoder(), media_type="text/event-stream", follow=True,
                               preamble=SseEncoder.RETRY)


def check_run_id(run_id: str) -> None:
    """A run id the interrupt routes can name: 1 to `MAX_ID` characters."""
    if not run_id or len(run_id) > MAX_ID:
        raise bad_request(f"runId must be a string of 1 to {MAX_ID} characters", "bad_run_id")


async def interrupt_run(access: SessionAccess, run_id: str) -> Response:
    check_run_id(run_id)
    await access.log()
    await access.gw.runs.runner.interrupt(access.project, access.session, run_id)
    return JSONResponse({"runId": run_id, "interrupted": True}, status_code=202)


def feedback_event(body: bytes) -> bytes:
    """The META event stored for a feedback body (a JSON object; `metaType`, if given, a string)."""
    try:
        feedback: Any = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise bad_request(f"feedback is not valid JSON: {exc}", "bad_json") from None
    if not isinstance(feedback, dict):
        raise bad_request("feedback must be a JSON object", "bad_feedback")
    meta_type = feedback.get("metaType", "feedback")
    if not isinstance(meta_type, str) or not 0 < len(meta_type) <= MAX_ID:
        raise bad_request(f"metaType must be a string of 1 to {MAX_ID} characters", "bad_feedback")
    return orjson.dumps({"type": "META", "metaType": meta_type, "payload": feedback,
                         "timestamp": now_ms()})


@operation(access="session", body={"application/json": FEEDBACK}, errors=(507,), links=CURSOR_LINK,
           answers={201: json_answer("stored as a META event", obj(("cursor",), cursor=ref("Cursor")))})
async def post_feedback(request: Request) -> Response:
    """POST .../feedback: stored as one META event; 201 with its cursor."""
    access = await session_access(request, WRITE)
    require_json(request)
    line = feedback_event(await read_body(request, FEEDBACK_BYTES))
    result = await (await access.log(create=True)).append([line])
    access.gw.registry.touch(access.project, access.session)
    return JSONResponse({"cursor": format_cursor(result.epoch, result.last)}, status_code=201)


@operation(access="session", errors=(502,), answers={200: json_answer("the runner's answer", {"type": "object"})})
async def get_capabilities(request: Request) -> Response:
    """GET .../capabilities: the runner's own answer, cached briefly per session."""
    access = await session_access(request, READ)
    await access.log()
    return JSONResponse(await access.gw.runs.runner.capabilities(access.project, access.session))


def routes() -> list[BaseRoute]:
    return [
        Route(SESSION + "/runs", post_run, methods=["POST"]),
        Route(SESSION + "/runs/{run}/interrupt", post_interrupt, methods=["POST"]),
        Route(SESSION + "/feedback", post_feedback, methods=["POST"]),
        Route(SESSION + "/capabilities", get_capabilities, methods=["GET"]),
    ]
