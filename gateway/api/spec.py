"""What `/openapi.json` says about each handler, declared next to it with `@operation(...)`.

`gateway.api.openapi` joins these declarations to the routes (paths, methods, path parameters),
so the document follows the code: a route without a declaration is still listed, and a
declaration lives beside the handler it describes. The schemas every route shares (events,
cursors, the PROTOCOL §3 error) are here. Pure data, no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

Schema = dict[str, Any]
F = TypeVar("F", bound=Callable[..., Any])
ATTRIBUTE = "__openapi__"
NDJSON = "application/x-ndjson"
SSE = "text/event-stream"


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(schema: Schema) -> Schema:
    return {"oneOf": [schema, {"type": "null"}]}


def obj(required: tuple[str, ...] = (), **properties: Schema) -> Schema:
    """A JSON object with these properties (others allowed: clients ignore what they do not know)."""
    return {"type": "object", "required": list(required), "properties": properties}


STRING: Schema = {"type": "string"}
INTEGER: Schema = {"type": "integer", "minimum": 0}
NAME: Schema = {"type": "string", "pattern": "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", "maxLength": 63}
SEQ: Schema = {"type": "integer", "minimum": 1}
EPOCH: Schema = {"type": "string", "pattern": "^[a-z0-9]{6,16}$"}
ERROR_CODES: dict[int, tuple[str, ...]] = {
    400: ("bad_name", "bad_cursor", "bad_request", "bad_json", "bad_event", "no_events", "bad_run_input",
          "bad_run_id", "bad_feedback", "bad_append", "client_gone", "host_not_allowed", "invalid", "http_error"),
    401: ("unauthenticated",),
    403: ("forbidden", "origin_not_allowed"),
    404: ("not_found", "no_run", "unknown_run", "unknown_session"),
    405: ("method_not_allowed",),
    409: ("project_mismatch", "session_reset", "run_in_progress"),
    410: ("expired",),
    413: ("body_too_large", "event_too_large", "too_large"),
    415: ("unsupported_media_type",),
    500: ("symlink_refused", "internal"),
    502: ("runner_unavailable", "runner_error", "runner_stream_cut"),
    503: ("shutting_down", "too_many_connections", "auth_unavailable", "store_unavailable", "not_ready",
          "unavailable", "invalid", "expired", "agent_registry_unavailable", "runner_type_unknown",
          "runner_token_missing", "runner_token_unavailable"),
    507: ("disk_full",),
}
"""Every `code` of a PROTOCOL §3 error, by the status it comes with (tests/test_openapi.py checks
the gateway's sources name no other)."""
ERROR_MEANING = {
    400: "bad request: a name, cursor, parameter or body, or a Host that does not name this gateway",
    401: "no credential, or a bad one", 403: "the credential does not allow this, or a write from a foreign Origin",
    404: "no such session (or run)", 405: "no such method here",
    409: "the session belongs to another project, was reset, or runs already",
    410: "the list's continue token expired", 413: "the body or an event is over its limit",
    415: "the body's content type is not accepted", 500: "a symbolic link in the session folder was refused",
    502: "the session's runner failed", 503: "the gateway drains, is over its connection limit, or a backend is down",
    507: "the disk is full: nothing was written",
}
SCHEMAS: dict[str, Schema] = {
    "Error": obj(("error",), error=obj(
        ("code", "message"), code={"type": "string", "enum": sorted({c for cs in ERROR_CODES.values() for c in cs})},
        message=STRING,
        stored={**INTEGER, "description": "streaming append: events stored before the error"},
        first={**nullable(ref("Cursor")), "description": "streaming append: first stored cursor"},
        last={**nullable(ref("Cursor")), "description": "streaming append: last stored cursor, resend after it"})),
    "Cursor": {"type": "string", "pattern": "^[a-z0-9]{6,16}-[1-9][0-9]{0,18}$",
               "description": "`<epoch>-<seq>`: opaque, hand it back to resume (PROTOCOL §2)"},
    "Event": {**obj(("type",), type=STRING), "description": "an AG-UI event, stored and served byte for byte"},
    "Appended": obj(("first", "last", "count"), first=ref("Cursor"), last=ref("Cursor"),
                    count=SEQ),
    "NdjsonLine": {"oneOf": [
        obj(("seq", "cursor", "event"), seq=SEQ, cursor=ref("Cursor"), event=ref("Event")),
        obj(("seq", "cursor", "skipped"), seq=SEQ, cursor=ref("Cursor"),
            skipped=obj(("reason", "bytes"), reason={"enum": ["corrupt", "oversize"]}, bytes=INTEGER)),
        obj(("reset",), reset=obj(("epoch",), epoch=EPOCH)),
        obj(("heartbeat",), heartbeat=INTEGER),
    ]},
    "SseEvent": {**obj(("data",), id=ref("Cursor"), data={
        "type": "string", "contentMediaType": "application/json", "contentSchema": ref("Event")}),
        "description": "one SSE event (controls are comments: `: live`, `: heartbeat`, `: reset epoch=E`)"},
}
EVENTS_BODY: Schema = {"oneOf": [ref("Event"), {"type": "array", "items": ref("Event"), "minItems": 1}]}


def ndjson_of(item: Schema) -> Schema:
    """An NDJSON body or answer: the schema of the whole stream read as an array of its lines
    (as OpenAPI 3.2 reads sequential media types)."""
    return {"type": "array", "items": item}


def query(name: str, schema: Schema, description: str) -> Schema:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


def header(name: str, schema: Schema, description: str) -> Schema:
    return {"name": name, "in": "header", "required": False, "schema": schema, "description": description}


FLAG: Schema = {"type": "string", "enum": ["1", "0", "true", "false"]}
STREAM_PARAMS = (
    query("after", ref("Cursor"), "resume strictly after this cursor (wins over tail; SSE: the Last-Event-ID "
          "header wins over it)"),
    query("tail", INTEGER, "start at the last N events"),
    query("follow", FLAG, "keep tailing after the replay (default 1 for SSE, 0 for NDJSON)"),
    query("view", {"enum": ["raw", "compact"]}, "compact merges the deltas of finished runs"),
)
SSE_PARAMS = (*STREAM_PARAMS, header("Last-Event-ID", ref("Cursor"), "resume (EventSource sends it); wins over after"))


@dataclass(frozen=True)
class Link:
    """An OpenAPI link: from an answer of one operation, the request a client makes next."""

    target: Callable[..., Any]
    """The handler of the operation linked to (its GET, else its only method)."""
    parameters: Mapping[str, str]
    description: str


def answer(description: str, content: Mapping[str, Schema] | None = None, **headers: Schema) -> Schema:
    """An OpenAPI response object: media type -> schema, and response headers by name."""
    out: Schema = {"description": description}
    if content:
        out["content"] = {media: {"schema": schema} for media, schema in content.items()}
    if headers:
        out["headers"] = {name.replace("_", "-"): {"required": True, "schema": schema}
                          for name, schema in headers.items()}
    return out


def json_answer(description: str, schema: Schema) -> Schema:
    return answer(description, {"application/json": schema})


@dataclass(frozen=True)
class Operation:
    """What a handler takes and answers, beyond the path and method its route gives."""

    answers: Mapping[int, Schema]
    """Its own answers by status (2xx, and refusals it alone makes); the shared errors are added."""
    access: str = "open"
    """`open` (no credential), `project` (a project's list) or `session` (one session)."""
    params: tuple[Schema, ...] = ()
    body: Mapping[str, Schema] = field(default_factory=dict)
    """Media type -> schema of the request body, if it takes one."""
    body_required: bool = True
    errors: tuple[int, ...] = ()
    """Error statuses of its own (PROTOCOL §3 `Error` bodies)."""
    links: Mapping[str, Link] = field(default_factory=dict)
    """Links from its first 2xx answer."""
    path: Mapping[str, Schema] = field(default_factory=dict)
    """Schemas of path parameters that are not project or session names."""
    components: Mapping[str, Schema] = field(default_factory=dict)
    """Schemas its bodies refer to by name, beside the shared `SCHEMAS`."""


def operation(**declared: Any) -> Callable[[F], F]:
    """Attach an `Operation` to a handler (read by `declaration`)."""
    op = Operation(**declared)

    def attach(handler: F) -> F:
        setattr(handler, ATTRIBUTE, op)
        return handler

    return attach


def declaration(handler: Callable[..., Any]) -> Operation | None:
    found = getattr(handler, ATTRIBUTE, None)
    return found if isinstance(found, Operation) else None


def pydantic_schemas(model: Any) -> tuple[Schema, dict[str, Schema]]:
    """A pydantic model's schema as a reference, and the component schemas it needs."""
    schema: Schema = model.model_json_schema(by_alias=True, ref_template="#/components/schemas/{model}")
    components = schema.pop("$defs", {})
    components[model.__name__] = schema
    _require_discriminators(components)
    return ref(model.__name__), components


def _require_discriminators(components: dict[str, Schema]) -> None:
    """pydantic leaves a discriminator property out of `required` when it has a default, yet its
    validator needs it to pick the variant: each variant of a discriminated union requires it."""
    stack: list[Any] = list(components.values())
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            found = item.get("discriminator")
            if isinstance(found, dict) and "propertyName" in found:
                for target in found.get("mapping", {}).values():
                    variant = components[target.rsplit("/", 1)[1]]
                    variant["required"] = sorted({*variant.get("required", ()), found["propertyName"]})
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
