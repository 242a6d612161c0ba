"""schemathesis hooks for the gateway (`SCHEMATHESIS_HOOKS=tests.schemathesis_hooks`, see docs/api.md).

- NDJSON request bodies: schemathesis cannot build them from a schema, so they are drawn here
  (one to three events, blank lines between them sometimes).
- NDJSON answers are read as the array of their lines, which the document's schemas describe.
- A followed stream never ends: a GET on an events route that would follow (`follow` absent or
  1, or SSE) is sent with `follow=0`, so it replays and ends; other `follow` values go as drawn.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
import schemathesis
from hypothesis import strategies as st

NDJSON = "application/x-ndjson"
_EVENT = st.fixed_dictionaries(
    {"type": st.text(min_size=1, max_size=20)},
    optional={"delta": st.text(max_size=40), "n": st.integers(), "ok": st.booleans()},
).map(lambda event: json.dumps(event).encode())  # not orjson: integers beyond 64 bits are fine here
_SEPARATOR = st.sampled_from([b"\n", b"\n", b"\n\n", b"\r\n"])
schemathesis.openapi.media_type(NDJSON, st.lists(st.tuples(_EVENT, _SEPARATOR), min_size=1, max_size=3).map(
    lambda lines: b"".join(event + end for event, end in lines)))


@schemathesis.deserializer(NDJSON)
def ndjson_lines(ctx: schemathesis.DeserializationContext, response: schemathesis.Response) -> list[Any]:
    return [orjson.loads(line) for line in response.content.split(b"\n") if line.strip()]


@schemathesis.hook
def before_call(ctx: schemathesis.HookContext, case: schemathesis.Case, kwargs: dict[str, Any]) -> None:
    if case.method == "GET" and case.path.endswith("/events"):
        query = dict(case.query or {})
        if str(query.get("follow", "1")) in ("1", "true", "True"):
            query["follow"] = "0"
        case.query = query
