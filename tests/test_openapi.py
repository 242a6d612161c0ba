"""`/openapi.json` describes every HTTP route, and no described operation answers a 500."""

from __future__ import annotations

import pytest
from starlette.routing import Route

from gateway.app import build_app
from tests.conftest import RunningGateway

pytestmark = [pytest.mark.anyio, pytest.mark.server]

PLACEHOLDERS = {"project": "p", "session": "s", "run": "r1"}


async def test_every_route_is_described(gw: RunningGateway) -> None:
    resp = await gw.http.get(gw.base + "/openapi.json")
    assert resp.status_code == 200
    doc = resp.json()
    assert doc["openapi"] == "3.1.0" and doc["info"]["title"] == "agui-gateway"
    routes = [r for r in build_app(gw.settings).routes if isinstance(r, Route) and r.methods]
    assert routes
    for route in routes:
        for method in route.methods - {"HEAD"}:
            op = doc["paths"][route.path][method.lower()]
            assert {p["name"] for p in op["parameters"]} == set(route.param_convertors), route.path
    ids = [op["operationId"] for item in doc["paths"].values() for op in item.values()]
    assert len(ids) == len(set(ids))


async def test_no_described_operation_answers_500(gw: RunningGateway) -> None:
    """Each operation called with valid names and a few bodies: refusals and answers, never a crash."""
    await gw.append("s", [{"type": "X"}])
    doc = (await gw.http.get(gw.base + "/openapi.json")).json()
    bodies: list[tuple[bytes, str]] = [(b"{}", "application/json"), (b"[]", "application/json"),
                                       (b'{"type": 1}', "application/json"), (b"\xff", "application/x-ndjson"),
                                       (b"x", "text/plain")]
    calls = 0
    for path, item in doc["paths"].items():
        url = gw.base + path.format(**PLACEHOLDERS)
        for method in item:
            for body, content_type in bodies if method in ("post", "put", "patch") else [(b"", "")]:
                headers = {"content-type": content_type} if content_type else {}
                params = {"follow": "0"} if path.endswith("/events") or path.endswith("/agui/events") else {}
                resp = await gw.http.request(method.upper(), url, content=body or None, headers=headers,
                                             params=params)
                calls += 1
                assert resp.status_code != 500 and resp.status_code != 405, (method, path, body, resp.text)
    assert calls > 20
