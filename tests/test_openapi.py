"""`/openapi.json` describes every HTTP route, and a bounded schemathesis run against a real
gateway finds no 5xx and no answer that breaks the document."""

from __future__ import annotations

import collections
import os
import re
import sys
from pathlib import Path

import anyio
import orjson
import pytest
from starlette.routing import Route

from examples.fake_runner import build_app as runner_app
from gateway.api.spec import ERROR_CODES, declaration
from gateway.app import build_app
from tests.conftest import RunningGateway, run_gateway
from tests.runner_helpers import serve_runner

pytestmark = [pytest.mark.anyio, pytest.mark.server]

PLACEHOLDERS = {"project": "p", "session": "s", "run": "r1"}
ROOT = Path(__file__).resolve().parent.parent
SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"


async def test_every_route_is_described(gw: RunningGateway) -> None:
    resp = await gw.http.get(gw.base + "/openapi.json")
    assert resp.status_code == 200
    doc = resp.json()
    assert doc["openapi"] == "3.1.0" and doc["info"]["title"] == "agui-gateway"
    routes = [r for r in build_app(gw.settings).routes if isinstance(r, Route) and r.methods]
    assert routes
    for route in routes:
        assert declaration(route.endpoint) is not None, f"{route.path}: no @operation next to its handler"
        for method in route.methods - {"HEAD"}:
            op = doc["paths"][route.path][method.lower()]
            path_params = {p["name"] for p in op["parameters"] if p["in"] == "path"}
            assert path_params == set(route.param_convertors), route.path
            answers = {int(status) for status in op["responses"]}
            assert any(200 <= s < 300 for s in answers) and 400 in answers, (route.path, answers)
    ids = [op["operationId"] for item in doc["paths"].values() for op in item.values()]
    assert len(ids) == len(set(ids))
    append = doc["paths"]["/v1/projects/{project}/sessions/{session}/events"]["post"]
    assert set(append["requestBody"]["content"]) == {"application/json", "application/x-ndjson"}
    links = append["responses"]["201"]["links"]
    assert links["ReadAppended"]["operationId"] == "get_v1_projects_project_sessions_session_events"
    assert links["ReadAppended"]["parameters"]["query.after"] == "$response.body#/first"


def source_error_codes() -> set[tuple[int, str]]:
    """(status, code) of every error the gateway's sources spell out."""
    found: set[tuple[int, str]] = set()
    for path in (ROOT / "gateway").rglob("*.py"):
        text = path.read_text()
        found |= {(int(s), c) for s, c in re.findall(r"(?:ApiError|RunnerError)\((\d{3}), \"([a-z_]+)\"", text)}
        found |= {(400, c) for c in re.findall(r"bad_request\([^()]*(?:\([^()]*\)[^()]*)*, \"([a-z_]+)\"\)", text)}
        for status, code in re.findall(r"status = (\d{3})\n    code = \"([a-z_]+)\"", text):
            found.add((int(status), code))
    return found


async def test_every_error_code_is_documented_under_its_status(gw: RunningGateway) -> None:
    codes = source_error_codes()
    assert (409, "session_reset") in codes and (400, "bad_run_id") in codes and (502, "runner_error") in codes
    assert {(s, c) for s, c in codes if c not in ERROR_CODES.get(s, ())} == set()
    doc = (await gw.http.get(gw.base + "/openapi.json")).json()
    enum = doc["components"]["schemas"]["Error"]["properties"]["error"]["properties"]["code"]["enum"]
    assert {c for _, c in codes} <= set(enum)


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


async def test_405_names_every_method_of_the_path(gw: RunningGateway) -> None:
    """The events path has one route per method: `Allow` lists them all (RFC 9110), not the first's."""
    for method in ("PUT", "OPTIONS", "PATCH"):
        resp = await gw.http.request(method, gw.events_url("s"))
        assert resp.status_code == 405 and resp.json()["error"]["code"] == "method_not_allowed"
        assert resp.headers["allow"] == "DELETE, GET, HEAD, POST"
    resp = await gw.http.post(gw.base + "/healthz")
    assert resp.status_code == 405 and resp.headers["allow"] == "GET, HEAD"


def transitions(report: Path) -> collections.Counter[tuple[str, int | None]]:
    """(link, status of the linked call) of every stateful step in a schemathesis NDJSON report."""
    seen: collections.Counter[tuple[str, int | None]] = collections.Counter()
    for line in report.read_bytes().splitlines():
        event = orjson.loads(line)
        finished = event.get("ScenarioFinished")
        if not finished or finished["phase"] != "stateful" or "cases" not in finished["recorder"]:
            continue
        recorder = finished["recorder"]
        for case_id, case in recorder["cases"].items():
            if case.get("transition"):
                response = recorder["interactions"].get(case_id, {}).get("response") or {}
                seen[(case["transition"]["id"].split(" -> ")[1], response.get("status_code"))] += 1
    return seen


async def test_schemathesis_finds_no_5xx_and_no_answer_off_the_document(tmp_path: Path) -> None:
    """tests/schemathesis.toml's run (every phase, a few examples per operation, stateful chains
    along the links) against a gateway whose runs go to the example runner. A followed stream
    would never end: the hooks send `follow=0` where a stream would follow."""
    async with serve_runner(runner_app(delay=0)) as port, \
            run_gateway(tmp_path / "state", runner_url=f"http://127.0.0.1:{port}/") as gw:
        report = tmp_path / "report.ndjson"
        env = {**os.environ, "SCHEMATHESIS_HOOKS": str(ROOT / "tests" / "schemathesis_hooks.py")}
        with anyio.fail_after(240):
            done = await anyio.run_process(
                [str(SCHEMATHESIS), "--config-file", str(ROOT / "tests" / "schemathesis.toml"), "run",
                 f"{gw.base}/openapi.json", "--no-color", "--report", "ndjson", "--report-ndjson-path", str(report)],
                cwd=tmp_path, env=env, check=False)
    out = done.stdout.decode(errors="replace")
    assert done.returncode == 0, out[-6000:]
    assert re.search(r"(\d+) generated, \1 passed", out), out[-2000:]
    steps = transitions(report)
    assert steps[("[201] ReadAppended", 200)] + steps[("[201] ReadAfterLast", 200)] >= 1, steps
