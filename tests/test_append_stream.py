"""Streaming appends (`POST .../events?stream=1`) and WebSocket appends (`{"append": [...]}`)."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import httpx
import orjson
import pytest
import websockets
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.uri import parse_uri

from gateway.api.ws_appends import WebSocketAppends
from gateway.auth import AuthDecision
from gateway.cli import EXIT_HTTP
from gateway.client import Event, GatewayClient, GatewayError
from gateway.store.layout import LOG_NAME
from tests.conftest import RunningGateway, run_gateway
from tests.events import evs
from tests.test_cli import cli

pytestmark = [pytest.mark.anyio, pytest.mark.server]

FSYNC_MODES = ("never", "always")
NDJSON = {"content-type": "application/x-ndjson"}


def stored_lines(g: RunningGateway, session: str = "s") -> list[bytes]:
    path = g.settings.state_dir / "sessions" / session / LOG_NAME
    return path.read_bytes().splitlines() if path.exists() else []


def ndjson(events: list[dict[str, Any]]) -> bytes:
    return b"".join(orjson.dumps(e) + b"\n" for e in events)


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part
        await anyio.lowlevel.checkpoint()


async def test_each_line_reaches_followers_while_the_request_goes_on(gw: RunningGateway) -> None:
    await gw.append("s", evs(1, 1))
    second_seen = anyio.Event()
    got: list[int] = []

    async def body() -> AsyncIterator[bytes]:
        yield b'{"type":"A","n":2}\n{"type":"A",'  # the second line is cut in two
        await second_seen.wait()  # the request cannot end before the follower had event 2
        yield b'"n":3,"s":"a\xe2\x80\xa8b"}\n\n{"type":"A","n":4}'  # U+2028 inside; no final newline

    async def follow() -> None:
        async with websockets.connect(gw.events_url("s", ws=True)) as ws:
            async for frame in ws:
                for line in str(frame).split("\n"):
                    got.extend(e["n"] for e in orjson.loads(line).get("events", []))
                if 2 in got:
                    second_seen.set()
                if 4 in got:
                    return

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(follow)
            resp = await gw.http.post(gw.events_url("s") + "?stream=1", content=body(), headers=NDJSON)
    assert resp.status_code == 201, resp.text
    epoch = resp.json()["first"].rsplit("-", 1)[0]
    assert resp.json() == {"first": f"{epoch}-2", "last": f"{epoch}-4", "count": 3}
    assert got == [1, 2, 3, 4]
    assert stored_lines(gw)[2] == '{"type":"A","n":3,"s":"a\u2028b"}'.encode()


@pytest.mark.parametrize(("bad", "status", "code", "words"), [
    (b'{"type":"A",}\n', 400, "bad_json", "line 4"),
    (b'{"type":"A","s":"\\ud800"}\n', 400, "bad_json", "line 4"),
    (b'["not an object"]\n', 400, "bad_event", "line 4"),
    (b'{"type":"A","pad":"' + b"x" * 5000 + b'"}\n', 413, "event_too_large", "line 4"),
    (b'{"type":"A","pad":"' + b"x" * 5000, 413, "event_too_large", "line 4"),  # no newline: never ends
])
async def test_a_failure_part_way_says_what_was_stored(gateway_factory: Any, bad: bytes, status: int, code: str,
                                                       words: str) -> None:
    async with gateway_factory(max_event_bytes=4096) as g:
        await g.append("s", evs(1, 1))
        body = chunks(ndjson(evs(2, 2)), b"\n" + ndjson(evs(4, 0)), bad[:100], bad[100:], ndjson(evs(9, 2)))
        resp = await g.http.post(g.events_url("s") + "?stream=1", content=body, headers=NDJSON)
        assert resp.status_code == status, resp.text
        err = resp.json()["error"]
        epoch = err["first"].rsplit("-", 1)[0]
        assert err["code"] == code and words in err["message"]
        assert (err["stored"], err["first"], err["last"]) == (2, f"{epoch}-2", f"{epoch}-3")
        assert [orjson.loads(x)["n"] for x in stored_lines(g)] == [1, 2, 3]


async def test_a_plain_post_stays_all_or_nothing(gw: RunningGateway) -> None:
    resp = await gw.http.post(gw.events_url("s"), content=chunks(ndjson(evs(1, 2)), b"{bad\n"), headers=NDJSON)
    assert resp.status_code == 400 and "line 3" in resp.json()["error"]["message"]
    assert "stored" not in resp.json()["error"] and stored_lines(gw) == []


async def test_a_reset_under_the_stream_ends_it_with_409(gw: RunningGateway) -> None:
    deleted = anyio.Event()

    async def body() -> AsyncIterator[bytes]:
        yield ndjson(evs(1, 2))
        with anyio.fail_after(30):
            while (await gw.http.get(gw.events_url("s").removesuffix("/events"))).json()["events"] < 2:
                await anyio.sleep(0.01)
        assert (await gw.http.delete(gw.events_url("s"))).status_code == 200
        deleted.set()
        yield ndjson(evs(3, 2))

    resp = await gw.http.post(gw.events_url("s") + "?stream=1", content=body(), headers=NDJSON)
    assert deleted.is_set()
    assert resp.status_code == 409, resp.text
    err = resp.json()["error"]
    assert err["code"] == "session_reset" and (err["stored"], err["first"], err["last"]) == (0, None, None)
    assert stored_lines(gw) == []


async def test_lines_stored_before_the_client_left_stay(gw: RunningGateway) -> None:
    await gw.append("s", evs(1, 1))
    with socket.create_connection(("127.0.0.1", gw.settings.port)) as sock:
        data = ndjson(evs(2, 2)) + b'{"type":"A","n":4'  # the last line never ends
        sock.sendall(b"POST /v1/projects/p/sessions/s/events?stream=1 HTTP/1.1\r\nhost: 127.0.0.1\r\n"
                     b"content-type: application/x-ndjson\r\ntransfer-encoding: chunked\r\n\r\n"
                     + b"%x\r\n%s\r\n" % (len(data), data))
        with anyio.fail_after(30):
            while len(stored_lines(gw)) < 3:
                await anyio.sleep(0.01)
    await gw.append("s", evs(5, 1))  # the log goes on: nothing of the unfinished line got in
    assert [orjson.loads(x)["n"] for x in stored_lines(gw)] == [1, 2, 3, 5]


@pytest.mark.parametrize(("query", "ctype", "status"), [
    ("?stream=1", "application/json", 415), ("?stream=yes", "application/x-ndjson", 400),
])
async def test_stream_parameter_and_content_type(gw: RunningGateway, query: str, ctype: str, status: int) -> None:
    resp = await gw.http.post(gw.events_url("s") + query, content=ndjson(evs(1, 1)), headers={"content-type": ctype})
    assert resp.status_code == status, resp.text
    assert stored_lines(gw) == []


async def test_an_empty_stream_is_400(gw: RunningGateway) -> None:
    resp = await gw.http.post(gw.events_url("s") + "?stream=1", content=b"\n\n", headers=NDJSON)
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "no_events"
    resp = await gw.http.post(gw.events_url("s") + "?stream=1", content=b"\n{bad\n", headers=NDJSON)
    assert resp.status_code == 400 and resp.json()["error"]["stored"] == 0
    assert not (gw.settings.state_dir / "sessions" / "s").exists()  # a stream that stores nothing creates nothing


async def ws_answers(ws: Any, count: int) -> tuple[list[dict[str, Any]], list[int]]:
    """Read until `count` answers (appended or error controls) came; the event seqs seen meanwhile."""
    answers: list[dict[str, Any]] = []
    seqs: list[int] = []
    with anyio.fail_after(30):
        while len(answers) < count:
            for line in str(await ws.recv()).split("\n"):
                obj = orjson.loads(line)
                if obj.get("control") in ("appended", "error"):
                    answers.append(obj)
                elif "events" in obj:
                    seqs.extend(range(obj["first"], obj["last"] + 1))
    return answers, seqs


async def test_websocket_appends_are_answered_in_order_and_the_stream_goes_on(gw: RunningGateway) -> None:
    await gw.append("s", evs(1, 1))
    async with websockets.connect(gw.events_url("s", ws=True)) as ws:
        await ws.send(orjson.dumps({"append": evs(2, 2)}).decode())
        await ws.send('{"append": [{"type":"A","n":4}, {"type": 5}]}')  # the second item is bad: nothing stored
        await ws.send('{"append": {"type":"A"}}')
        await ws.send('{ "append" : [{"type":"A","n":4,"big":123456789012345678901234567890}] }')
        answers, _ = await ws_answers(ws, 4)
        epoch = answers[0]["first"].rsplit("-", 1)[0]
        assert answers[0] == {"control": "appended", "first": f"{epoch}-2", "last": f"{epoch}-3", "count": 2}
        assert answers[1]["control"] == "error" and answers[1]["code"] == "bad_event" and answers[1]["status"] == 400
        assert answers[2]["control"] == "error" and answers[2]["code"] == "bad_append"
        assert answers[3] == {"control": "appended", "first": f"{epoch}-4", "last": f"{epoch}-4", "count": 1}
        await ws.send('{"control":"ping"}')
        while orjson.loads(await ws.recv()).get("control") != "heartbeat":
            pass
    assert stored_lines(gw)[3] == b'{"type":"A","n":4,"big":123456789012345678901234567890}'


async def test_an_append_only_websocket_gets_answers_and_no_events(gw: RunningGateway) -> None:
    """`subscribe=0`: hello, then only the answers to its appends (a runner drops its echo unread),
    while a follower of the same session sees every event."""
    await gw.append("s", evs(1, 3))
    async with websockets.connect(gw.events_url("s", ws=True) + "?follow=1") as follower, \
            websockets.connect(gw.events_url("s", ws=True) + "?subscribe=0") as writer:
        hello = orjson.loads(await writer.recv())
        assert hello["control"] == "hello" and hello["head"].endswith("-3")
        for n in range(4, 9):
            await writer.send(orjson.dumps({"append": evs(n, 1)}).decode())
        await writer.send('{"append": [{"type": 5}]}')
        answers, seqs = await ws_answers(writer, 6)
        assert [a.get("first", "").rsplit("-", 1)[-1] for a in answers] == ["4", "5", "6", "7", "8", ""]
        assert answers[-1]["code"] == "bad_event" and seqs == []
        await writer.send('{"control":"ping"}')
        assert orjson.loads(await writer.recv())["control"] == "heartbeat"  # nothing else came in between
        seen: list[int] = []
        with anyio.fail_after(30):
            while len(seen) < 8:
                for line in str(await follower.recv()).split("\n"):
                    obj = orjson.loads(line)
                    seen.extend(range(obj["first"], obj["last"] + 1) if "events" in obj else [])
        assert seen == list(range(1, 9))
    past_end = hello["head"].rsplit("-", 1)[0] + "-999"  # a follower would be told `reset`
    async with websockets.connect(gw.events_url("s", ws=True) + f"?subscribe=0&after={past_end}") as writer:
        hello = orjson.loads(await writer.recv())
        assert hello["reset"] is False and hello["head"].endswith("-8")  # a writer is not positioned


async def test_websocket_appends_sent_together_are_pipelined_into_few_commit_cycles(tmp_path: Path) -> None:
    """Each append is written as it arrives, without waiting for the one before to be durable:
    40 messages sent at once take a few commit cycles, not 40, and are answered in order."""
    async with run_gateway(tmp_path / "state", fsync="always") as g:
        await g.append("s", evs(1, 1))
        commits = g.gateway.store.commits
        async with websockets.connect(g.events_url("s", ws=True)) as ws:
            before = commits.cycles
            for n in range(2, 42):
                await ws.send(orjson.dumps({"append": evs(n, 1)}).decode())
            answers, _ = await ws_answers(ws, 40)
            cycles = commits.cycles - before
    epoch = answers[0]["first"].rsplit("-", 1)[0]
    assert answers == [{"control": "appended", "first": f"{epoch}-{n}", "last": f"{epoch}-{n}", "count": 1}
                       for n in range(2, 42)]
    assert cycles <= 4, f"{cycles} commit cycles for 40 appends sent together"
    assert [orjson.loads(line)["n"] for line in stored_lines(g)] == list(range(1, 42))


async def test_websocket_appends_not_yet_answered_when_the_client_leaves_still_become_durable(tmp_path: Path) -> None:
    async with run_gateway(tmp_path / "state", fsync="always") as g:
        await g.append("s", evs(1, 1))
        async with websockets.connect(g.events_url("s", ws=True)) as ws:
            for n in range(2, 22):
                await ws.send(orjson.dumps({"append": evs(n, 1)}).decode())
        flog = await g.gateway.store.open("p", "s", create=False)
        with anyio.fail_after(30):  # bounds a stuck test, not a timing check
            while flog.lines < 21 or flog.writing():
                await anyio.sleep(0.01)
        resp = await g.http.get(g.events_url("s"))
    assert [orjson.loads(line)["event"]["n"] for line in resp.content.splitlines()] == list(range(1, 22))


class _ReadOnly:
    """Writes only with the `writer` token (asked at the first append, long after the handshake)."""

    async def check(self, token: str | None, project: str, verb: str) -> AuthDecision:
        if verb == "update" and token != "writer":
            return AuthDecision("forbidden", "reader", "this credential may read, not write")
        return AuthDecision("ok", "reader", "reads allowed")


async def test_a_websocket_append_needs_a_credential_that_may_write(gw: RunningGateway) -> None:
    await gw.append("s", evs(1, 1))
    gw.gateway.authorizer = _ReadOnly()
    async with websockets.connect(gw.events_url("s", ws=True)) as ws:
        await ws.send(orjson.dumps({"append": evs(2, 1)}).decode())
        (answer,), _ = await ws_answers(ws, 1)
        assert answer["control"] == "error" and answer["status"] == 403 and answer["code"] == "forbidden"
    assert len(stored_lines(gw)) == 1
    headers = {"Authorization": "Bearer writer", "X-Other": "x" * 100}
    async with websockets.connect(gw.events_url("s", ws=True), additional_headers=headers) as ws:
        await ws.send(orjson.dumps({"append": evs(2, 1)}).decode())
        (answer,), _ = await ws_answers(ws, 1)
        assert answer["control"] == "appended"
    assert len(stored_lines(gw)) == 2


async def test_a_websocket_append_that_loses_to_a_reset_is_an_error_control(tmp_path: Path,
                                                                          gateway_factory: Any) -> None:
    async with gateway_factory() as g:
        await g.append("s", evs(1, 1))
        async with websockets.connect(g.events_url("s", ws=True) + "?follow=1") as ws:
            assert (await g.http.delete(g.events_url("s"))).status_code == 200
            await ws.send(orjson.dumps({"append": evs(2, 1)}).decode())
            (answer,), _ = await ws_answers(ws, 1)
            assert answer["control"] == "appended" and answer["first"].endswith("-1")  # a new log, seq 1


async def test_the_client_streams_appends_and_reads_u2028_back_over_sse(gw: RunningGateway) -> None:
    """Lines end at `\\n` only: an event holding U+2028 comes back whole over SSE and WebSocket."""
    poison = {"type": "TEXT_MESSAGE_CONTENT", "delta": "one\u2028two\u2029three\x85four"}

    async def events() -> AsyncIterator[dict[str, Any] | bytes]:
        yield evs(1, 1)[0]
        yield b'{"type":"A","n":2}\n{"type":"A",'
        yield b'"n":3}\n'
        yield poison

    async with GatewayClient(gw.base, "p") as client:
        result = await client.append_stream("s", events())
        assert result["count"] == 4 and result["last"].endswith("-4")
        for transport in ("sse", "websocket"):
            got = [item.data async for item in client.events("s", follow=False, transport=transport)
                   if isinstance(item, Event)]
            assert got[3] == poison, transport
        with pytest.raises(GatewayError) as failed:
            await client.append_stream("s", [evs(5, 1)[0], b"{oops\n", evs(6, 1)[0]])
    assert failed.value.status == 400 and failed.value.detail["stored"] == 1
    assert failed.value.detail["last"] == result["last"][:-1] + "5"


async def test_cli_append_stream_and_replay_of_a_u2028_event(gw: RunningGateway, tmp_path: Path) -> None:
    url = f"{gw.base}/v1/projects/p/sessions/s"
    data = ndjson(evs(1, 2)) + '{"type":"A","s":"a\u2028b"}'.encode()
    done = await cli("append", url, "--stream", "-", stdin=data)
    assert done.returncode == 0, done.stderr
    assert orjson.loads(done.stdout)["count"] == 3
    done = await cli("replay", url)
    assert done.returncode == 0, done.stderr
    assert done.stdout == data + b"\n"
    (tmp_path / "bad.jsonl").write_bytes(ndjson(evs(4, 1)) + b"[1]\n")
    done = await cli("append", url, "--stream", str(tmp_path / "bad.jsonl"))
    assert done.returncode == EXIT_HTTP and b"stored 1 events before the error" in done.stderr, done.stderr


async def test_a_quiet_stream_is_kept_open_by_blank_lines(gateway_factory: Any) -> None:
    """The gateway cuts a body that stops arriving (GATEWAY_HEADER_TIMEOUT); the client's blank lines
    keep a source that is only slow from being taken for a stalled upload."""

    async def slow() -> AsyncIterator[dict[str, Any]]:
        yield evs(1, 1)[0]
        await anyio.sleep(2.5)
        yield evs(2, 1)[0]

    async with gateway_factory(header_timeout=1.0) as g, GatewayClient(g.base, "p") as client:
        with pytest.raises(httpx.TransportError):  # without them: cut after the first event
            await g.http.post(g.events_url("bare") + "?stream=1", headers=NDJSON,
                              content=(orjson.dumps(e) + b"\n" async for e in slow()))
        assert len(stored_lines(g, "bare")) == 1
        result = await client.append_stream("s", slow(), keepalive=0.3)
        assert result["count"] == 2 and len(stored_lines(g)) == 2


def _masked_text(text: str, fin: bool = True, opcode: int = 0x1) -> bytes:
    return Frame(Opcode(opcode), text.encode(), fin).serialize(mask=True)


@pytest.mark.parametrize("between,fast", [
    (b"", True),  # nothing in between: every append after the first is taken as it arrives
    (bytes([0x89, 0x82]) + b"\x01\x02\x03\x04" + bytes([ord("h") ^ 1, ord("i") ^ 2]), True),  # a ping
    (b"fragment", False),  # a message in two frames: websockets parses the connection from then on
])
async def test_websocket_appends_after_the_first_skip_the_receive_loop_unless_handed_over(
        gw: RunningGateway, monkeypatch: pytest.MonkeyPatch, between: bytes, fast: bool) -> None:
    """Counted, not timed: `take` (the receive loop's way) runs for the first append only, while
    the transport cuts messages itself; the frames are written in pieces that cut headers and
    payloads, with a control frame or a fragmented message among them. Answers stay in order."""
    calls = 0
    take = WebSocketAppends.take

    async def counted(self: WebSocketAppends, text: str) -> None:
        nonlocal calls
        calls += 1
        await take(self, text)

    monkeypatch.setattr(WebSocketAppends, "take", counted)
    await gw.append("s", evs(1, 1))
    async with websockets.connect(gw.events_url("s", ws=True) + "?subscribe=0") as ws:
        assert orjson.loads(await ws.recv())["control"] == "hello"
        await ws.send(orjson.dumps({"append": evs(2, 1)}).decode())
        assert (await ws_answers(ws, 1))[0][0]["control"] == "appended"
        msgs = [orjson.dumps({"append": evs(n, 1)}).decode() for n in range(3, 9)]
        if between == b"fragment":
            half = len(msgs[2]) // 2
            middle = _masked_text(msgs[2][:half], fin=False) + _masked_text(msgs[2][half:], opcode=0x0)
        else:
            middle = between + _masked_text(msgs[2])
        raw = b"".join(_masked_text(m) for m in msgs[:2]) + middle + b"".join(_masked_text(m) for m in msgs[3:])
        transport = ws.transport
        for start in range(0, len(raw), 7):  # pieces of 7 bytes, a few loop turns apart
            transport.write(raw[start:start + 7])
            if start % 35 == 0:
                await anyio.sleep(0.001)
        answers, _ = await ws_answers(ws, 6)
    assert [a["first"].rsplit("-", 1)[-1] for a in answers] == [str(n) for n in range(3, 9)]
    assert [orjson.loads(line)["n"] for line in stored_lines(gw)] == list(range(1, 9))
    assert calls == (1 if fast else 1 + 4), calls  # handed over at the fragment: it and the three after it


async def _count_calls(monkeypatch: pytest.MonkeyPatch, name: str) -> list[int]:
    calls = [0]
    method = getattr(WebSocketAppends, name)

    async def counted(self: WebSocketAppends, *args: Any) -> Any:
        calls[0] += 1
        return await method(self, *args)

    monkeypatch.setattr(WebSocketAppends, name, counted)
    return calls


async def test_a_websocket_append_is_answered_from_the_end_of_its_commit_cycle(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Counted, not timed: appends sent one after the other, each after the last answer, are
    answered with no answering task (`_answer_all` never runs) while the connection takes each
    answer at once; what they answer is what the log holds."""
    tasks = await _count_calls(monkeypatch, "_answer_all")
    async with run_gateway(tmp_path / "state", fsync="always") as g:
        await g.append("s", evs(1, 1))
        cycles = g.gateway.store.commits
        async with websockets.connect(g.events_url("s", ws=True) + "?subscribe=0") as ws:
            assert orjson.loads(await ws.recv())["control"] == "hello"
            before = cycles.cycles
            for n in range(2, 12):
                await ws.send(orjson.dumps({"append": evs(n, 1)}).decode())
                (answer,), _ = await ws_answers(ws, 1)
                assert answer["control"] == "appended" and answer["first"].endswith(f"-{n}")
            assert cycles.cycles - before >= 10  # each append waited for a cycle of its own
        assert [orjson.loads(line)["n"] for line in stored_lines(g)] == list(range(1, 12))
    assert tasks == [0]


async def test_answers_held_behind_a_replay_the_client_does_not_read_keep_their_order(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A client appends once its replay (megabytes it does not read) has filled the connection
    (the gateway's send waits, as the send watchdog sees): the answers cannot be written at once,
    so a task sends them once the client reads, in order, and every event comes once. The client
    is websockets' sans-I/O protocol over a socket the test reads only at the end."""
    tasks = await _count_calls(monkeypatch, "_answer_all")
    async with run_gateway(tmp_path / "state", fsync="always") as g:
        pad = "x" * 4000
        for start in range(1, 2001, 500):
            await g.append("s", [{"type": "A", "n": n, "pad": pad} for n in range(start, start + 500)])
        client = ClientProtocol(parse_uri(g.events_url("s", ws=True) + "?follow=1"), max_size=None)
        async with await anyio.connect_tcp("127.0.0.1", g.settings.port) as tcp:
            client.send_request(client.connect())
            for data in client.data_to_send():
                await tcp.send(data)
            while client.state is not State.OPEN:
                client.receive_data(await tcp.receive())
            with anyio.fail_after(60):  # bounds a stuck test, not a timing check
                while not g.gateway.watchdog.pending:
                    await anyio.sleep(0.01)
                for n in range(2001, 2021):
                    client.send_text(orjson.dumps({"append": evs(n, 1)}))
                for data in client.data_to_send():
                    await tcp.send(data)
                flog = g.gateway.store.logs["s"]
                while flog.lines < 2020 or flog.writing():  # durable, whether or not answered yet
                    await anyio.sleep(0.01)
                answers: list[str] = []
                seqs: list[int] = []
                while len(answers) < 20 or len(seqs) < 2020:
                    client.receive_data(await tcp.receive())
                    for frame in client.events_received():  # the handshake's response, then frames
                        for line in bytes(frame.data).split(b"\n") if isinstance(frame, Frame) else []:
                            obj = orjson.loads(line) if line else {}
                            if obj.get("control") == "appended":
                                answers.append(obj["first"].rsplit("-", 1)[-1])
                            seqs.extend(range(obj["first"], obj["last"] + 1) if "events" in obj else [])
    assert answers == [str(n) for n in range(2001, 2021)]
    assert seqs == list(range(1, 2021))
    assert tasks[0] >= 1
