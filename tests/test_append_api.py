"""The append, delete, export and status endpoints on a real server: bad input is refused with a
clear error and loses nothing, good input is stored exactly (PROTOCOL §1-§3)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import httpx
import orjson
import pytest

from gateway.store.layout import LOG_NAME
from tests.conftest import TLS, RunningGateway, run_gateway, stored_bytes
from tests.events import evs
from tests.streamclient import Seen, ws_read_all

FSYNC_MODES = ("never", "always")  # the stream and append paths under both settings
STORES = ("files", "nats")  # every guarantee checked on both stores
pytestmark = [pytest.mark.anyio, pytest.mark.server]

JSON = {"content-type": "application/json"}
NDJSON = {"content-type": "application/x-ndjson"}



def log_path(g: RunningGateway, session: str = "s") -> Path:
    return g.settings.state_dir / "sessions" / session / LOG_NAME


def tree(root: Path) -> dict[str, bytes]:
    """Every file under `root` with its bytes (the index is left out: it is a cache)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not p.name.endswith(".idx")}


async def state(g: RunningGateway, session: str = "s") -> tuple[dict[str, bytes], Any]:
    resp = await g.http.get(f"{g.base}/v1/projects/p/sessions/{session}")
    status = resp.json() if resp.status_code == 200 else resp.status_code
    if isinstance(status, dict):
        status.pop("lastSeen", None)
    return tree(g.settings.state_dir), status


def assert_error(resp: httpx.Response, status: int, code: str | None = None, *words: str) -> str:
    assert resp.status_code == status, (resp.status_code, resp.text)
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    if code is not None:
        assert body["error"]["code"] == code, body
    message: str = body["error"]["message"]
    for word in words:
        assert word in message, message
    return message


async def refused(g: RunningGateway, status: int, code: str | None, *words: str, session: str = "s",
                  **request: Any) -> str:
    """POST something bad: the answer is the expected error and nothing on disk or in status moved."""
    before = await state(g, session)
    resp = await g.http.post(g.events_url(session), **request)
    message = assert_error(resp, status, code, *words)
    assert await state(g, session) == before
    return message


@pytest.fixture
async def seeded(gw: RunningGateway) -> RunningGateway:
    await gw.append("s", evs(1, 3))
    return gw


async def test_bad_json_is_400_and_names_where(seeded: RunningGateway) -> None:
    g = seeded
    await refused(g, 400, "bad_json", "body", content=b'{"type": "X", ', headers=JSON)
    await refused(g, 400, "bad_json", "body", content=b'[{"type": "X"}, ', headers=JSON)
    await refused(g, 400, "bad_json", content=b'{"type": "X"} trailing', headers=JSON)
    await refused(g, 400, "bad_json", "line 3", headers=NDJSON,
                  content=b'{"type": "A"}\n{"type": "B"}\n{"type": oops}\n{"type": "D"}\n')
    await refused(g, 400, "bad_json", "line 2", headers=NDJSON, content=b'{"type": "A"}\n\xff\xfe\n')


@pytest.mark.parametrize("body", [
    b'"just a string"', b"42", b"null", b'[{"type": "A"}, 7]', b'[{"type": "A"}, [{"type": "B"}]]',
    b'{"no_type": 1}', b'{"type": 1}', b'{"type": null}', b'[{"type": "A"}, {"type": ["B"]}]',
])
async def test_items_must_be_objects_with_a_string_type(seeded: RunningGateway, body: bytes) -> None:
    await refused(seeded, 400, "bad_event", "type", content=body, headers=JSON)


async def test_ndjson_non_object_line_is_refused(seeded: RunningGateway) -> None:
    await refused(seeded, 400, "bad_event", headers=NDJSON, content=b'{"type": "A"}\n[1, 2]\n')
    await refused(seeded, 400, "bad_event", headers=NDJSON, content=b'{"type": "A"}\n{"kind": "B"}\n')


@pytest.mark.parametrize(("body", "headers"), [
    (b"[]", JSON), (b"  [ ]  ", JSON), (b"", JSON), (b"", NDJSON), (b"\n\r\n  \n", NDJSON),
])
async def test_no_events_is_400(seeded: RunningGateway, body: bytes, headers: dict[str, str]) -> None:
    await refused(seeded, 400, None, content=body, headers=headers)


@pytest.mark.parametrize("ctype", [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data"])
async def test_wrong_content_type_is_415(seeded: RunningGateway, ctype: str | None) -> None:
    headers = {"content-type": ctype} if ctype else {}
    await refused(seeded, 415, "unsupported_media_type", content=b'{"type": "X"}', headers=headers)


async def test_content_type_parameters_and_json_suffix_are_accepted(gw: RunningGateway) -> None:
    for ctype in ("application/json; charset=utf-8", "application/vnd.agui+json", "application/x-ndjson; x=1"):
        resp = await gw.http.post(gw.events_url("s"), content=b'{"type":"X"}', headers={"content-type": ctype})
        assert resp.status_code == 201, (ctype, resp.text)


async def test_body_over_the_limit_is_413_with_and_without_content_length(tmp_path: Path) -> None:
    async with run_gateway(tmp_path / "state", max_body_bytes=4096) as g:
        await g.append("s", evs(1, 2))
        big = json.dumps(evs(1, 200, pad="x" * 20)).encode()
        assert len(big) > 4096
        await refused(g, 413, "body_too_large", content=big, headers=JSON)

        async def chunks() -> Any:
            for i in range(0, len(big), 1000):
                yield big[i : i + 1000]

        before = await state(g)
        resp = await g.http.post(g.events_url("s"), content=chunks(), headers=JSON)
        assert "content-length" not in resp.request.headers
        assert resp.request.headers.get("transfer-encoding") == "chunked"
        assert_error(resp, 413, "body_too_large")
        assert await state(g) == before
        # just under the limit still goes in
        ok = json.dumps(evs(1, 10)).encode()
        resp = await g.http.post(g.events_url("s"), content=ok, headers=JSON)
        assert resp.status_code == 201


async def test_one_oversize_event_refuses_the_whole_batch(tmp_path: Path) -> None:
    async with run_gateway(tmp_path / "state", max_event_bytes=1000) as g:
        await g.append("s", evs(1, 2))
        batch = evs(1, 50)
        batch[37]["pad"] = "y" * 1200
        msg = await refused(g, 413, "event_too_large", "event 37", content=json.dumps(batch).encode(), headers=JSON)
        assert "1000" in msg
        nd = b"\n".join(json.dumps(e).encode() for e in batch) + b"\n"
        await refused(g, 413, "event_too_large", content=nd, headers=NDJSON)
        await refused(g, 413, "event_too_large", content=json.dumps(batch[37]).encode(), headers=JSON)
        # exactly at the limit is accepted
        event = {"type": "X", "pad": ""}
        event["pad"] = "z" * (1000 - len(json.dumps(event, separators=(",", ":"))))
        line = json.dumps(event, separators=(",", ":")).encode()
        assert len(line) == 1000
        resp = await g.http.post(g.events_url("s"), content=line, headers=JSON)
        assert resp.status_code == 201, resp.text
        assert (await stored_bytes(g)).endswith(b"\n" + line + b"\n")


async def raw_request(g: RunningGateway, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
    """One request with the path sent exactly as given (HTTP clients normalize '..' away)."""
    async with await anyio.connect_tcp("127.0.0.1", g.settings.port) as sock:
        head = (f"{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n"
                f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n")
        await sock.send(head.encode() + body)
        data = b""
        with anyio.move_on_after(10):
            while True:
                try:
                    data += await sock.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    break
    status_line, _, rest = data.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


@pytest.mark.parametrize("name", [
    "..", ".", "%2E%2E", "A", "a_b", "a" * 64, "-a", "a-", "a.b", "%00", "a%20b", "%C3%A9", "a%5Cb",
])
async def test_bad_names_are_400_before_anything_is_created(gw: RunningGateway, name: str) -> None:
    root = gw.settings.state_dir
    before = sorted(str(p) for p in root.parent.rglob("*"))
    paths = [(m, f"/v1/projects/p/sessions/{name}/events") for m in ("POST", "GET", "DELETE")]
    paths += [("GET", f"/v1/projects/p/sessions/{name}"), ("GET", f"/v1/projects/p/sessions/{name}/export"),
              ("POST", f"/v1/projects/{name}/sessions/s/events")]
    for method, path in paths:
        status, body = await raw_request(gw, method, path, b'{"type": "X"}')
        assert status == 400, (method, path, status, body)
        error = orjson.loads(body)["error"]
        assert error["code"] == "bad_name" and "DNS-1123" in error["message"], error
    assert sorted(str(p) for p in root.parent.rglob("*")) == before


SLASHED = ["a%2Fb", "a%2fb", "..%2F..%2Fetc"]


@pytest.mark.parametrize("name", SLASHED)
async def test_url_encoded_slash_in_a_name_touches_nothing(gw: RunningGateway, name: str) -> None:
    root = gw.settings.state_dir
    before = sorted(str(p) for p in root.parent.rglob("*"))
    for method in ("POST", "GET", "DELETE"):
        status, _ = await raw_request(gw, method, f"/v1/projects/p/sessions/{name}/events", b'{"type": "X"}')
        assert status in (400, 404)
    assert sorted(str(p) for p in root.parent.rglob("*")) == before


@pytest.mark.parametrize("name", SLASHED)
async def test_url_encoded_slash_in_a_name_is_400(gw: RunningGateway, name: str) -> None:
    status, body = await raw_request(gw, "POST", f"/v1/projects/p/sessions/{name}/events", b'{"type": "X"}')
    assert status == 400, body
    assert orjson.loads(body)["error"]["code"] == "bad_name"


async def test_longest_valid_name_is_accepted(gw: RunningGateway) -> None:
    name = "a" * 63
    await gw.append(name, evs(1, 1))
    assert (await stored_bytes(gw, name)).count(b"\n") == 1


async def test_project_mismatch_is_409_and_writes_nothing(seeded: RunningGateway) -> None:
    g = seeded
    before = await state(g)
    url = g.events_url("s", project="other")
    resp = await g.http.post(url, json={"type": "X"})
    assert_error(resp, 409, None, "other")
    for method, path in (("GET", "/events"), ("DELETE", "/events"), ("GET", ""), ("GET", "/export")):
        resp = await g.http.request(method, f"{g.base}/v1/projects/other/sessions/s{path}")
        assert_error(resp, 409)
    assert await state(g) == before


@pytest.mark.parametrize("body", [
    b'{"type": "X", "v": NaN}', b'{"type": "X", "v": Infinity}', b'{"type": "X", "v": -Infinity}',
    b'[{"type": "X"}, {"type": "Y", "v": [1, NaN]}]', b'{"type": "X", "v": 1e400}',
    b'[{"type": "X", "v": -1.5E+999}]',
])
async def test_nan_and_infinity_are_refused(seeded: RunningGateway, body: bytes) -> None:
    await refused(seeded, 400, "bad_json", content=body, headers=JSON)
    await refused(seeded, 400, "bad_json", content=body.strip(b"[]").replace(b"}, {", b"}\n{"), headers=NDJSON)


BIG = (b'{"type":"X","big":123456789012345678901234567890,"neg":-98765432109876543210987654321,'
       b'"f":1.000000000000000000001,"e":1E+300,"z":-0.0,"x":1.50,"s":"\\ud83d\\ude00 \\u00e9"}')


@pytest.mark.parametrize("how", ["object", "array", "ndjson"])
async def test_numbers_beyond_64_bits_are_stored_and_replayed_exactly(gw: RunningGateway, how: str) -> None:
    if how == "object":
        resp = await gw.http.post(gw.events_url("s"), content=BIG, headers=JSON)
    elif how == "array":
        resp = await gw.http.post(gw.events_url("s"), content=b"[" + BIG + b"," + BIG + b"]", headers=JSON)
    else:
        resp = await gw.http.post(gw.events_url("s"), content=BIG + b"\n" + BIG + b"\n", headers=NDJSON)
    assert resp.status_code == 201, resp.text
    stored = (await stored_bytes(gw)).split(b"\n")[:-1]
    assert stored and all(line == BIG for line in stored)
    resp = await gw.http.get(gw.events_url("s"), headers={"accept": "application/x-ndjson"})
    for line in resp.content.splitlines():
        assert line.endswith(b',"event":' + BIG + b"}")
    seen, _, _ = await ws_read_all(gw.events_url("s", ws=True) + "?follow=0")
    frames = "\n".join(seen.frames).encode()
    assert frames.count(BIG) == len(stored)


@pytest.mark.parametrize(("body", "media", "where"), [
    (b'{"type":"X","s":"\\ud800"}', "application/json", "body"),
    (b'[{"type":"Y"},{"type":"X","s":"a\\udfffb"}]', "application/json", "event 1"),
    (b'{"type":"Y"}\n\n{"type":"X","\\ud800":1}\n', "application/x-ndjson", "line 3"),
])
async def test_a_lone_surrogate_is_refused_naming_its_line(gw: RunningGateway, body: bytes, media: str,
                                                           where: str) -> None:
    """Valid JSON text, but no reader of the project (orjson, the clients) can take it: refused whole."""
    resp = await gw.http.post(gw.events_url("s"), content=body, headers={"content-type": media})
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["code"] == "bad_json" and where in resp.json()["error"]["message"]
    assert "surrogate" in resp.json()["error"]["message"]
    assert not log_path(gw).exists()


async def test_surrogate_pairs_and_escaped_backslashes_are_not_lone_surrogates(gw: RunningGateway) -> None:
    body = b'[{"type":"X","s":"\\ud83d\\ude00"},{"type":"Y","s":"\\\\ud800","big":123456789012345678901234}]'
    resp = await gw.http.post(gw.events_url("s"), content=body, headers=JSON)
    assert resp.status_code == 201, resp.text
    assert (await stored_bytes(gw)) == body[1:-1].replace(b"},{", b"}\n{") + b"\n"


async def test_pretty_printed_object_is_one_line(gw: RunningGateway) -> None:
    pretty = b'{\r\n  "type": "X",\r\n  "nested": {\n    "a": [1,\n 2]\n  },\n  "s": "two  spaces"\n}\n'
    resp = await gw.http.post(gw.events_url("s"), content=pretty, headers=JSON)
    assert resp.status_code == 201, resp.text
    data = (await stored_bytes(gw))
    assert data.count(b"\n") == 1 and b"\r" not in data
    assert json.loads(data) == {"type": "X", "nested": {"a": [1, 2]}, "s": "two  spaces"}
    pretty_array = b'[\n  {\n    "type": "A"\n  },\n  {\r\n "type": "B"}\n]'
    resp = await gw.http.post(gw.events_url("s"), content=pretty_array, headers=JSON)
    assert resp.status_code == 201, resp.text
    lines = (await stored_bytes(gw)).split(b"\n")
    assert [json.loads(x)["type"] for x in lines[1:-1]] == ["A", "B"] and lines[-1] == b""
    assert b"\r" not in (await stored_bytes(gw))


async def test_ndjson_with_crlf_and_blank_lines(gw: RunningGateway) -> None:
    body = b'\r\n{"type":"A","n":1}\r\n\r\n   \n{"type":"B","n":2}\r\n{"type":"C","n":3}'
    resp = await gw.http.post(gw.events_url("s"), content=body, headers=NDJSON)
    assert resp.status_code == 201, resp.text
    assert resp.json()["count"] == 3
    assert (await stored_bytes(gw)) == b'{"type":"A","n":1}\n{"type":"B","n":2}\n{"type":"C","n":3}\n'


async def test_ndjson_line_with_a_carriage_return_inside_is_stored_without_it(gw: RunningGateway) -> None:
    # JSON allows CR as whitespace between tokens; a stored CR would end an SSE `data:` line early.
    body = b'{"type":"A",\r"n":1}\n'
    resp = await gw.http.post(gw.events_url("s"), content=body, headers=NDJSON)
    assert resp.status_code == 201, resp.text
    stored = (await stored_bytes(gw))
    assert b"\r" not in stored and json.loads(stored) == {"type": "A", "n": 1}


async def test_201_body_and_cursors_contiguous_across_appends(gw: RunningGateway) -> None:
    r1 = await gw.append("s", evs(1, 3))
    epoch = r1["first"].rsplit("-", 1)[0]
    assert r1 == {"first": f"{epoch}-1", "last": f"{epoch}-3", "count": 3}
    r2 = await gw.append("s", evs(4, 1))
    assert r2 == {"first": f"{epoch}-4", "last": f"{epoch}-4", "count": 1}
    resp = await gw.http.post(gw.events_url("s"), content=b'{"type":"A"}\n{"type":"B"}\n', headers=NDJSON)
    assert resp.status_code == 201 and resp.json() == {"first": f"{epoch}-5", "last": f"{epoch}-6", "count": 2}
    resp = await gw.http.post(gw.events_url("s"), content=b'{"type":"C"}', headers=JSON)
    assert resp.status_code == 201 and resp.json() == {"first": f"{epoch}-7", "last": f"{epoch}-7", "count": 1}
    status = (await gw.http.get(f"{gw.base}/v1/projects/p/sessions/s")).json()
    assert status["head"] == f"{epoch}-7" and status["events"] == 7


async def test_concurrent_appends_from_many_clients(gw: RunningGateway) -> None:
    results: list[tuple[int, int, int]] = []

    async def client(c: int) -> None:
        async with httpx.AsyncClient(verify=TLS, timeout=30) as http:
            for k in range(5):
                batch = [{"type": "X", "c": c, "k": k, "i": i} for i in range(1 + (c + k) % 3)]
                resp = await http.post(gw.events_url("s"), json=batch)
                assert resp.status_code == 201, resp.text
                body = resp.json()
                first, last = (int(body[key].rsplit("-", 1)[1]) for key in ("first", "last"))
                assert last - first + 1 == body["count"] == len(batch)
                results.append((first, last, c * 100 + k))

    async with anyio.create_task_group() as tg:
        for c in range(12):
            tg.start_soon(client, c)
    seqs = sorted(s for first, last, _ in results for s in range(first, last + 1))
    assert seqs == list(range(1, len(seqs) + 1))
    lines = (await stored_bytes(gw)).splitlines()
    assert len(lines) == len(seqs)
    for first, last, who in results:  # each batch landed whole, in order, at the seqs it was told
        got = [orjson.loads(lines[s - 1]) for s in range(first, last + 1)]
        assert [(e["c"] * 100 + e["k"], e["i"]) for e in got] == [(who, i) for i in range(last - first + 1)]


async def test_delete_then_append_starts_a_new_epoch(seeded: RunningGateway) -> None:
    g = seeded
    old = (await g.http.get(f"{g.base}/v1/projects/p/sessions/s")).json()
    resp = await g.http.delete(g.events_url("s"))
    assert resp.status_code == 200
    new_epoch = resp.json()["epoch"]
    assert new_epoch != old["epoch"]
    assert not log_path(g).exists() or (await stored_bytes(g)) == b""
    status = (await g.http.get(f"{g.base}/v1/projects/p/sessions/s")).json()
    assert (status["epoch"], status["head"], status["events"], status["bytes"]) == (new_epoch, None, 0, 0)
    r = await g.append("s", evs(10, 2))
    assert r["first"] == f"{new_epoch}-1" and r["last"] == f"{new_epoch}-2"
    seen, code, _ = await ws_read_all(g.events_url("s", ws=True) + f"?follow=0&after={old['head']}")
    hello = seen.control("hello")[0]
    assert hello["reset"] is True and hello["epoch"] == new_epoch
    assert [e["n"] for e in seen.events] == [10, 11] and code == 1000
    resp = await g.http.get(g.events_url("s") + f"?after={old['head']}", headers={"accept": "application/x-ndjson"})
    first = orjson.loads(resp.content.splitlines()[0])
    assert first == {"reset": {"epoch": new_epoch}}


async def test_delete_unknown_session_is_404(gw: RunningGateway) -> None:
    resp = await gw.http.delete(gw.events_url("nope"))
    assert_error(resp, 404)
    assert not (gw.settings.state_dir / "sessions" / "nope").exists()


async def test_export_jsonl_and_json_stream_the_log_without_skipped_lines(tmp_path: Path) -> None:
    async with run_gateway(tmp_path / "state", frame_bytes=512) as g:
        await g.append("s", evs(1, 300, pad="p" * 40))
        with open(log_path(g), "ab") as fh:  # another writer leaves a corrupt line, then a good one
            fh.write(b'{"type": "broken"\n{"type":"Y","n":301}\n')
        await g.append("s", evs(302, 5))
        log = (await stored_bytes(g))
        good = [line for line in log.split(b"\n")[:-1] if line != b'{"type": "broken"']
        assert len(good) == 306

        async with g.http.stream("GET", f"{g.base}/v1/projects/p/sessions/s/export?format=jsonl") as resp:
            assert resp.status_code == 200
            assert resp.headers["content-disposition"].startswith("attachment")
            assert 's.jsonl' in resp.headers["content-disposition"]
            assert "content-length" not in resp.headers  # streamed, not materialized
            parts = [chunk async for chunk in resp.aiter_raw()]
        assert len(parts) > 1
        assert b"".join(parts) == b"\n".join(good) + b"\n"

        resp = await g.http.get(f"{g.base}/v1/projects/p/sessions/s/export")
        assert resp.content == b"\n".join(good) + b"\n"

        resp = await g.http.get(f"{g.base}/v1/projects/p/sessions/s/export?format=json")
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("application/json")
        assert resp.headers["content-disposition"] == 'attachment; filename="s.json"'
        assert resp.content == b"[" + b",".join(good) + b"]"
        assert json.loads(resp.content) == [json.loads(x) for x in good]


async def test_export_of_an_empty_log_and_bad_format(gw: RunningGateway) -> None:
    await gw.append("s", evs(1, 1))
    await gw.http.delete(gw.events_url("s"))
    resp = await gw.http.get(f"{gw.base}/v1/projects/p/sessions/s/export?format=json")
    assert resp.status_code == 200 and json.loads(resp.content) == []
    resp = await gw.http.get(f"{gw.base}/v1/projects/p/sessions/s/export?format=jsonl")
    assert resp.status_code == 200 and resp.content == b""
    resp = await gw.http.get(f"{gw.base}/v1/projects/p/sessions/s/export?format=csv")
    assert_error(resp, 400)


@pytest.mark.files_only
async def test_export_and_status_see_what_another_process_appended(gw: RunningGateway) -> None:
    await gw.append("s", evs(1, 2))
    with open(log_path(gw), "ab") as fh:
        fh.write(b'garbage\n{"type":"A"}\n')
    status = (await gw.http.get(f"{gw.base}/v1/projects/p/sessions/s")).json()
    assert status["events"] == 4 and status["bytes"] == log_path(gw).stat().st_size
    resp = await gw.http.get(f"{gw.base}/v1/projects/p/sessions/s/export?format=json")
    assert json.loads(resp.content) == [*evs(1, 2), {"type": "A"}]


async def test_status_fields(tmp_path: Path) -> None:
    async with run_gateway(tmp_path / "state", heartbeat_interval=0.2) as g:
        await g.append("s", evs(1, 4))
        resp = await g.http.get(f"{g.base}/v1/projects/p/sessions/s")
        assert resp.status_code == 200
        status = resp.json()
        for key in ("project", "session", "epoch", "head", "events", "bytes", "connections", "lastSeen", "agentStatus"):
            assert key in status, key
        size = log_path(g).stat().st_size
        assert (status["project"], status["session"], status["events"], status["bytes"]) == ("p", "s", 4, size)
        assert status["head"] == f"{status['epoch']}-4"
        assert status["connections"] == 0
        assert isinstance(status["lastSeen"], int) and status["lastSeen"] > 1_600_000_000_000

        seen = Seen()
        async with anyio.create_task_group() as tg:
            async def watch() -> None:
                await ws_read_all(g.events_url("s", ws=True), seen)

            tg.start_soon(watch)
            for _ in range(500):
                status = (await g.http.get(f"{g.base}/v1/projects/p/sessions/s")).json()
                if status["connections"] == 1:
                    break
                await anyio.sleep(0.01)
            assert status["connections"] == 1
            tg.cancel_scope.cancel()


async def test_unknown_session_is_404(gw: RunningGateway) -> None:
    for path in ("", "/export", "/export?format=json", "/events?follow=0"):
        resp = await gw.http.get(f"{gw.base}/v1/projects/p/sessions/nope{path}")
        assert_error(resp, 404)
    resp = await gw.http.get(gw.events_url("nope"), headers={"accept": "text/event-stream"})
    assert_error(resp, 404)
    assert not (gw.settings.state_dir / "sessions" / "nope").exists()
