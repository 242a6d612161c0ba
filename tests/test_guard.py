"""CSRF and DNS rebinding under GATEWAY_AUTH=none: JSON-only write bodies, Host and Origin checks."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import orjson
import pytest
import websockets
from starlette.websockets import WebSocketDisconnect

from gateway.api.guard import host_allowed, host_name, same_or_allowed_origin
from gateway.api.websocket import client_gone
from gateway.logs import RedactTokens, redact
from gateway.runner.client import RetryPolicy
from tests.conftest import RunningGateway, free_port, run_gateway
from tests.runner_helpers import run_body, session_url, set_runner_port, stored, wait_until_done

pytestmark = pytest.mark.server

Factory = Callable[..., contextlib.AbstractAsyncContextManager[RunningGateway]]
COMPAT = "/api/projects/p/agentic-sessions/s1"


@pytest.mark.parametrize(("host", "listen", "allowed", "ok"), [
    ("127.0.0.1:8080", "127.0.0.1", (), True),
    ("[::1]:8080", "127.0.0.1", (), True),
    ("10.1.2.3", "0.0.0.0", (), True),  # an IP literal cannot be a rebound name
    ("localhost:8080", "127.0.0.1", (), True),
    ("LocalHost.", "127.0.0.1", (), True),
    ("evil.example:8080", "127.0.0.1", (), False),
    ("gw.lan:8080", "gw.lan", (), True),
    ("gw.example.com", "0.0.0.0", ("gw.example.com",), True),
    ("a.gw.example.com", "0.0.0.0", ("gw.example.com",), False),
    ("a.gw.example.com", "0.0.0.0", (".gw.example.com",), True),
    ("gw.example.com", "0.0.0.0", (".gw.example.com",), True),
    ("evilgw.example.com", "0.0.0.0", (".gw.example.com",), False),
    ("anything.example", "0.0.0.0", ("*",), True),
    (None, "127.0.0.1", (), True),
])
def test_host_allowed(host: str | None, listen: str, allowed: tuple[str, ...], ok: bool) -> None:
    assert host_allowed(host, listen, allowed) is ok


def test_host_name() -> None:
    assert host_name("[::1]:80") == "::1"
    assert host_name("::1") == "::1"
    assert host_name("Example.COM.:443") == "example.com"


@pytest.mark.parametrize(("origin", "host", "allowed", "ok"), [
    (None, "127.0.0.1:8080", (), True),
    ("http://127.0.0.1:8080", "127.0.0.1:8080", (), True),
    ("http://evil.example", "127.0.0.1:8080", (), False),
    ("null", "127.0.0.1:8080", (), False),
    ("null", "127.0.0.1:8080", ("null",), True),
    ("https://ui.example", "127.0.0.1:8080", ("https://ui.example",), True),
    ("http://127.0.0.1:9999", "127.0.0.1:8080", (), False),
])
def test_origin(origin: str | None, host: str, allowed: tuple[str, ...], ok: bool) -> None:
    assert same_or_allowed_origin(origin, host, allowed) is ok


@pytest.mark.anyio
@pytest.mark.parametrize("path", ["/runs", "/feedback"])
async def test_text_plain_writes_are_refused(gw: RunningGateway, path: str) -> None:
    """The bodies a cross-site form or a no-preflight fetch can send (text/plain) start nothing."""
    body = orjson.dumps(run_body() if path == "/runs" else {"metaType": "x"})
    for content_type in ("text/plain", "application/x-www-form-urlencoded", None):
        headers = {"content-type": content_type} if content_type else {}
        resp = await gw.http.post(session_url(gw, "s1", path), content=body, headers=headers)
        assert resp.status_code == 415, resp.text
        assert resp.json()["error"]["code"] == "unsupported_media_type"
    assert not (gw.settings.state_dir / "sessions" / "s1").exists()


@pytest.mark.anyio
@pytest.mark.parametrize("path", ["/agui/run", "/agui/interrupt", "/agui/feedback"])
async def test_text_plain_compat_writes_are_refused(gw: RunningGateway, path: str) -> None:
    body = orjson.dumps(run_body() if path == "/agui/run" else {"runId": "r1"})
    resp = await gw.http.post(gw.base + COMPAT + path, content=body, headers={"content-type": "text/plain"})
    assert resp.status_code == 415, resp.text
    assert not (gw.settings.state_dir / "sessions" / "s1").exists()


@pytest.mark.anyio
async def test_foreign_host_is_refused_on_every_transport(gw: RunningGateway) -> None:
    """A rebound name (the attacker's own, pointed at 127.0.0.1) reaches nothing, not even reads."""
    await gw.append("s1", [{"type": "RUN_STARTED", "threadId": "t", "runId": "r"}])
    evil = {"host": f"rebind.evil.example:{gw.settings.port}"}
    for resp in (await gw.http.get(gw.events_url("s1"), headers=evil),
                 await gw.http.get(gw.base + "/v1/projects/p/sessions", headers=evil),
                 await gw.http.post(gw.events_url("s1"), json=[{"type": "X"}], headers=evil)):
        assert resp.status_code == 400 and resp.json()["error"]["code"] == "host_not_allowed", resp.text
    refused = await handshake(gw, gw.events_url("s1", ws=True), host=evil["host"])
    assert refused.status_code == 400 and orjson.loads(refused.body)["error"]["code"] == "host_not_allowed"
    localhost = {"host": f"localhost:{gw.settings.port}"}
    assert (await gw.http.get(gw.events_url("s1"), headers=localhost)).status_code == 200


async def handshake(g: RunningGateway, url: str, *, host: str | None = None, origin: str | None = None,
                    ) -> websockets.Response:
    """The HTTP answer to a WebSocket handshake that `Host` and `Origin` (if given) should refuse."""
    if host is not None:
        url = url.replace(f"127.0.0.1:{g.settings.port}", host)
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with websockets.connect(url, host="127.0.0.1", port=g.settings.port, origin=origin):
            pass  # an upgrade: the refusal came (if at all) after the connection was opened
    return refused.value.response


async def _read(ws: websockets.ClientConnection) -> list[str]:
    """The event types a `follow=0` stream delivers before its close."""
    types: list[str] = []
    with contextlib.suppress(websockets.ConnectionClosedOK):
        async for frame in ws:
            for line in str(frame).split("\n"):
                types += [event["type"] for event in orjson.loads(line).get("events", ())]
    return types


async def _append(ws: websockets.ClientConnection) -> list[str]:
    """The answer to a WebSocket append, past the stream's own frames."""
    await ws.send(orjson.dumps({"append": [{"type": "WS"}]}).decode())
    while "appended" not in (frame := str(await ws.recv())):
        pass
    return [orjson.loads(line)["control"] for line in frame.split("\n") if "control" in line]


WS_ROUTES = {
    "read": ("/v1/projects/p/sessions/s1/events?follow=0", _read, ["RUN_STARTED"]),
    "append": ("/v1/projects/p/sessions/s1/events", _append, ["appended"]),
}


@pytest.mark.anyio
@pytest.mark.parametrize("route", [*WS_ROUTES, "compat"])
async def test_every_websocket_handshake_gets_the_host_and_origin_checks(gateway_factory: Factory,
                                                                        route: str) -> None:
    """A page on another site opens no WebSocket at all, to read or to append (browsers apply no
    CORS to WebSockets): foreign Host and Origin are refused with their HTTP error instead of the
    upgrade, on every path. Clients without Origin and listed names and origins are served."""
    async with gateway_factory(allowed_hosts=("gw.example.com",), allowed_origins=("https://ui.example",)) as g:
        await g.append("s1", [{"type": "RUN_STARTED", "threadId": "t", "runId": "r"}])
        path = COMPAT + "/agui/events" if route == "compat" else WS_ROUTES[route][0]
        url, port = g.ws_base + path, g.settings.port
        for host, origin, code in ((f"rebind.evil.example:{port}", None, "host_not_allowed"),
                                   (f"rebind.evil.example:{port}", f"http://rebind.evil.example:{port}",
                                    "host_not_allowed"),
                                   (None, "http://evil.example", "origin_not_allowed"),
                                   (f"gw.example.com:{port}", "http://evil.example", "origin_not_allowed"),
                                   (None, f"http://127.0.0.1:{port + 1}", "origin_not_allowed")):
            refused = await handshake(g, url, host=host, origin=origin)
            status = 400 if code == "host_not_allowed" else 403
            assert (refused.status_code, orjson.loads(refused.body)["error"]["code"]) == (status, code), refused.body
        if route == "compat":  # no WebSocket is served there: what passes the checks meets the router's refusal
            passed = await handshake(g, url, host=f"gw.example.com:{port}", origin="https://ui.example")
            assert (passed.status_code, passed.body) == (403, b"")
            return
        _, use, wanted = WS_ROUTES[route]
        for host, origin in ((None, None), (None, f"http://127.0.0.1:{port}"),
                             (f"gw.example.com:{port}", "https://ui.example")):
            target = url if host is None else url.replace(f"127.0.0.1:{port}", host)
            async with websockets.connect(target, host="127.0.0.1", port=port, origin=origin) as ws:
                assert await use(ws) == wanted
        assert [e["type"] for e in stored(g, "s1")] == ["RUN_STARTED"] + ["WS"] * 3 * (route == "append")


@pytest.mark.anyio
async def test_allowed_hosts_setting(gateway_factory: Factory) -> None:
    async with gateway_factory(allowed_hosts=(".example.com",)) as g:
        ok = await g.http.get(g.base + "/v1/projects/p/sessions", headers={"host": "gw.example.com"})
        assert ok.status_code == 200, ok.text
        bad = await g.http.get(g.base + "/v1/projects/p/sessions", headers={"host": "gw.example.org"})
        assert bad.status_code == 400


@pytest.mark.anyio
async def test_cross_origin_writes_are_refused(gateway_factory: Factory) -> None:
    async with gateway_factory(allowed_origins=("https://ui.example",)) as g:
        events = [{"type": "RUN_STARTED", "threadId": "t", "runId": "r"}]
        for method in ("POST", "DELETE"):
            resp = await g.http.request(method, g.events_url("s1"), json=events if method == "POST" else None,
                                        headers={"origin": "http://evil.example"})
            assert resp.status_code == 403 and resp.json()["error"]["code"] == "origin_not_allowed", resp.text
        assert not (g.settings.state_dir / "sessions" / "s1").exists()
        same = await g.http.post(g.events_url("s1"), json=events, headers={"origin": g.base})
        assert same.status_code == 201, same.text
        listed = await g.http.post(g.events_url("s1"), json=events, headers={"origin": "https://ui.example"})
        assert listed.status_code == 201, listed.text
        read = await g.http.get(g.events_url("s1"), headers={"origin": "http://evil.example"})
        assert read.status_code == 200  # reads stay readable cross-origin; CORS decides what a page sees



@pytest.mark.parametrize("url", [
    "/v1/projects/p/sessions/s/events?token=SECRET",
    "/v1/projects/p/sessions/s/events?follow=0&%74oken=SECRET",
    "/v1/projects/p/sessions/s/events?%74%6F%6B%65%6E=SECRET&x=1",
    "/v1/projects/p/sessions/s/events?TOKEN=SECRET",
    "/v1/projects/p/sessions/s/events?tok%65n=SECRET%26more",
    "/v1/projects/p/sessions/s/events?+token+=SECRET",
    "/v1/projects/p/sessions/s/events?access_token=SECRET",
])
def test_tokens_are_redacted_under_any_encoding(url: str) -> None:
    """Every spelling the query parser reads as `token` is hidden in a log line, access logs included."""
    names = {k.strip().lower() for k, _ in parse_qsl(urlsplit(url).query)}
    assert names & {"token", "access_token"}, "the parser reads one of these names as the credential"
    assert "SECRET" not in redact(f'127.0.0.1:5000 - "GET {url} HTTP/1.1" 200')
    record = logging.LogRecord("uvicorn.access", logging.INFO, "", 0, '%s - "%s %s HTTP/%s" %d',
                               ("127.0.0.1:5000", "GET", url, "1.1", 200), None)
    RedactTokens().filter(record)
    assert "SECRET" not in record.getMessage() and "[redacted]" in record.getMessage()


def test_other_parameters_are_kept() -> None:
    assert redact("GET /x?follow=0&cursor=e-1&tokens=2") == "GET /x?follow=0&cursor=e-1&tokens=2"


@pytest.mark.anyio
async def test_a_session_of_another_tenant_is_404_not_409(tmp_path: Path) -> None:
    """A token for project q learns nothing about p's session names: every route answers 404 as
    for a free name; a token that may read p still gets the 409 that names the owner."""
    tokens = tmp_path / "tokens"
    tokens.write_text("p-secret p\nq-secret q\nboth-secret p,q\n")
    async with run_gateway(tmp_path / "state", auth="token", tokens_file=str(tokens)) as g:
        p_hdr, q_hdr = {"authorization": "Bearer p-secret"}, {"authorization": "Bearer q-secret"}
        assert (await g.http.post(g.events_url("s"), json=[{"type": "X"}], headers=p_hdr)).status_code == 201
        free = await g.http.get(g.events_url("free", project="q"), headers=q_hdr)
        assert free.status_code == 404
        for resp in (await g.http.get(g.events_url("s", project="q"), headers=q_hdr),
                     await g.http.get(g.base + "/v1/projects/q/sessions/s", headers=q_hdr),
                     await g.http.post(g.events_url("s", project="q"), json=[{"type": "X"}], headers=q_hdr),
                     await g.http.delete(g.events_url("s", project="q"), headers=q_hdr)):
            assert resp.status_code == 404, resp.text
            assert "'p'" not in resp.text and resp.json()["error"]["code"] == free.json()["error"]["code"]
        async with websockets.connect(g.events_url("s", project="q", ws=True) + "?token=q-secret") as ws:
            with pytest.raises(websockets.ConnectionClosed):
                await ws.recv()
        assert ws.close_code == 4404 and "'p'" not in (ws.close_reason or "")
        both = await g.http.get(g.events_url("s", project="q"), headers={"authorization": "Bearer both-secret"})
        assert both.status_code == 409 and both.json()["error"]["code"] == "project_mismatch"
        assert [e["type"] for e in stored(g, "s")] == ["X"]


@pytest.mark.anyio
async def test_metrics_name_no_session_by_default_and_never_a_missing_one(gateway_factory: Factory,
                                                                       tmp_path: Path) -> None:
    """Requests for sessions that do not exist add no series; per-session series are opt-in."""
    for per_session in (False, True):
        async with gateway_factory(metrics_sessions=per_session, state_dir=tmp_path / str(per_session)) as g:
            await g.append("real", [{"type": "X"}])
            await g.http.get(g.events_url("real") + "?follow=0")
            for n in range(20):
                assert (await g.http.get(g.events_url(f"phantom-{n}"))).status_code == 404
            text = (await g.http.get(g.base + "/metrics")).text
            assert "phantom" not in text
            assert ('session="real"' in text) is per_session


@pytest.mark.anyio
async def test_metrics_token(gateway_factory: Factory) -> None:
    async with gateway_factory(metrics_token="scrape-secret") as g:
        assert (await g.http.get(g.base + "/metrics")).status_code == 401
        assert (await g.http.get(g.base + "/metrics", headers={"authorization": "Bearer nope"})).status_code == 401
        ok = await g.http.get(g.base + "/metrics", headers={"authorization": "Bearer scrape-secret"})
        assert ok.status_code == 200 and "gateway_connections" in ok.text


@pytest.mark.anyio
async def test_numbers_in_queries_are_ascii_digits_only(gw: RunningGateway) -> None:
    await gw.append("s", [{"type": "X"}])
    for bad in ("1_0", "\u0661\u0660", "+1", " 1", "-1", "1e1", "٣"):
        resp = await gw.http.get(gw.events_url("s"), params={"tail": bad})
        assert resp.status_code == 400, bad
        resp = await gw.http.get(gw.base + "/v1/projects/p/sessions", params={"limit": bad})
        assert resp.status_code == 400, bad
    assert (await gw.http.get(gw.events_url("s"), params={"tail": "10"})).status_code == 200


def test_a_disconnect_wrapped_in_exception_groups_is_a_client_leaving() -> None:
    gone = BaseExceptionGroup("tg", [ExceptionGroup("inner", [WebSocketDisconnect(1006), BrokenPipeError()])])
    assert client_gone(gone) and client_gone(ConnectionResetError())
    assert not client_gone(ExceptionGroup("tg", [WebSocketDisconnect(1006), ValueError("bug")]))
    assert not client_gone(RuntimeError("bug"))


@pytest.mark.anyio
async def test_runner_errors_do_not_show_the_runner_address(gw: RunningGateway) -> None:
    gw.gateway.runs.retry = RetryPolicy(tries=2, first_delay=0.01, factor=1.5, max_delay=0.02)
    port = free_port()  # nothing listens there
    set_runner_port(gw.settings.state_dir, "s1", port)
    caps = await gw.http.get(session_url(gw, "s1", "/capabilities"))
    assert caps.status_code == 502 and str(port) not in caps.text and "127.0.0.1" not in caps.text, caps.text
    resp = await gw.http.post(session_url(gw, "s1", "/runs/r1/interrupt"))
    assert resp.status_code == 502 and str(port) not in resp.text, resp.text
    assert (await gw.http.post(session_url(gw, "s1", "/runs"), json=run_body())).status_code == 202
    events = await wait_until_done(gw, "s1")
    assert events[-1]["type"] == "RUN_ERROR" and str(port) not in orjson.dumps(events).decode(), events[-1]
