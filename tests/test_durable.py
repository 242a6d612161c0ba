"""The Durable Streams interface on a real gateway: sessions as streams, restarts, auth, guards."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from gateway.ds.protocol import format_offset, incarnation_of, parse_offset
from tests.conftest import TLS, RunningGateway, run_gateway, spawn_gateway

pytestmark = [pytest.mark.anyio, pytest.mark.server]

STORES = ("files", "nats")
Factory = Callable[..., AbstractAsyncContextManager[RunningGateway]]
EVENTS = [{"type": "CUSTOM", "name": f"e{i}"} for i in range(3)]
TEXT = {"content-type": "text/plain"}


def ds(gw: RunningGateway, path: str, project: str = "p") -> str:
    return f"{gw.base}/ds/{project}/v1/stream/{path}"


async def ndjson(gw: RunningGateway, session: str, after: str | None = None) -> list[dict[str, Any]]:
    params = {"after": after} if after else {}
    resp = await gw.http.get(gw.events_url(session), params=params)
    return [httpx.Response(200, content=line).json() for line in resp.content.splitlines()]


async def test_a_session_is_a_json_stream_whose_offsets_are_its_cursors(gw: RunningGateway) -> None:
    await gw.append("s", EVENTS)
    epoch = (await gw.http.get(f"{gw.base}/v1/projects/p/sessions/s")).json()["epoch"]
    whole = await gw.http.get(ds(gw, "sessions/s"), params={"offset": "-1"})
    assert whole.status_code == 200 and whole.headers["content-type"] == "application/json"
    assert whole.json() == EVENTS and whole.headers["stream-up-to-date"] == "true"
    assert whole.headers["stream-next-offset"] == format_offset(incarnation_of(epoch), 3)
    rest = await gw.http.get(ds(gw, "sessions/s"), params={"offset": format_offset(incarnation_of(epoch), 1)})
    assert rest.json() == [e["event"] for e in await ndjson(gw, "s", after=f"{epoch}-1")] == EVENTS[1:]
    added = await gw.http.post(ds(gw, "sessions/s"), json=[{"type": "CUSTOM", "name": "via-ds"}])
    assert added.status_code == 204 and parse_offset(added.headers["stream-next-offset"]) == (incarnation_of(epoch), 4)
    assert (await ndjson(gw, "s"))[-1] == {"seq": 4, "cursor": f"{epoch}-4",
                                           "event": {"type": "CUSTOM", "name": "via-ds"}}
    refused = await gw.http.post(ds(gw, "sessions/s"), json={"no": "type"})
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "bad_event"
    assert (await gw.http.post(ds(gw, "sessions/s"), headers={"stream-closed": "true"})).status_code == 405
    assert (await gw.http.get(ds(gw, "sessions/nope"))).status_code == 404


async def test_deleting_a_session_starts_a_new_epoch_and_its_offsets_are_gone(gw: RunningGateway) -> None:
    await gw.append("s", EVENTS)
    old = (await gw.http.head(ds(gw, "sessions/s"))).headers["stream-next-offset"]
    assert (await gw.http.delete(ds(gw, "sessions/s"))).status_code == 204
    status = (await gw.http.get(f"{gw.base}/v1/projects/p/sessions/s")).json()
    assert status["events"] == 0
    assert (await gw.http.get(ds(gw, "sessions/s"), params={"offset": old})).status_code == 410
    fresh = await gw.http.get(ds(gw, "sessions/s"), params={"offset": "-1"})
    assert fresh.json() == []
    assert fresh.headers["stream-next-offset"] == format_offset(incarnation_of(status["epoch"]), 0)


async def test_a_long_poll_wakes_for_an_append_through_v1(gw: RunningGateway) -> None:
    await gw.append("s", EVENTS[:1])
    tail = (await gw.http.head(ds(gw, "sessions/s"))).headers["stream-next-offset"]
    got: list[httpx.Response] = []
    async with anyio.create_task_group() as tg:
        async def poll() -> None:
            got.append(await gw.http.get(ds(gw, "sessions/s"), params={"offset": tail, "live": "long-poll"}))

        tg.start_soon(poll)
        while not any(log.waiters for log in gw.gateway.store.logs.values()):  # type: ignore[attr-defined]
            await anyio.sleep(0.01)  # until the poll waits on the log
        await gw.append("s", EVENTS[1:2])
    assert got[0].status_code == 200 and got[0].json() == EVENTS[1:2]
    assert got[0].headers["stream-cursor"]


async def test_streams_their_state_and_forks_survive_a_restart(gateway_factory: Factory) -> None:
    async with gateway_factory() as gw:
        http = gw.http
        assert (await http.put(ds(gw, "logs/a"), content=b"one\n", headers=TEXT)).status_code == 201
        producer = {"producer-id": "w", "producer-epoch": "0", "producer-seq": "0", "content-type": "text/plain"}
        assert (await http.post(ds(gw, "logs/a"), content=b"two\n", headers=producer)).status_code == 200
        fork = await http.put(ds(gw, "logs/a-fork"), headers={"stream-forked-from": "/v1/stream/logs/a"})
        assert fork.status_code == 201
        assert (await http.post(ds(gw, "logs/a-fork"), content=b"fork\n",
                                headers={"content-type": "text/plain"})).status_code == 204
        tail = (await http.head(ds(gw, "logs/a"))).headers["stream-next-offset"]
        closing = await http.put(ds(gw, "done"), content=b"all", headers={"content-type": "text/plain",
                                                                        "stream-closed": "true"})
        assert closing.headers["stream-closed"] == "true"
        await http.put(ds(gw, "j"), json=[{"n": 1}, {"n": 2}])
    async with gateway_factory() as gw:
        http = gw.http
        a = await http.get(ds(gw, "logs/a"))
        assert a.content == b"one\ntwo\n" and a.headers["stream-next-offset"] == tail
        retry = await http.post(ds(gw, "logs/a"), content=b"two\n", headers=producer)
        assert retry.status_code == 204 and retry.headers["producer-seq"] == "0"  # a duplicate, not appended
        assert (await http.get(ds(gw, "logs/a"))).content == b"one\ntwo\n"
        done = await http.get(ds(gw, "done"))
        assert done.content == b"all" and done.headers["stream-closed"] == "true"
        assert (await http.post(ds(gw, "done"), content=b"more", headers=TEXT)).status_code == 409
        assert (await http.get(ds(gw, "logs/a-fork"))).content == b"one\ntwo\nfork\n"
        assert (await http.get(ds(gw, "j"))).json() == [{"n": 1}, {"n": 2}]
        assert (await http.delete(ds(gw, "logs/a"))).status_code == 204
        assert (await http.get(ds(gw, "logs/a"))).status_code == 410  # its fork still reads it
        assert (await http.get(ds(gw, "logs/a-fork"))).content == b"one\ntwo\nfork\n"


async def test_streams_are_not_sessions(gw: RunningGateway) -> None:
    await gw.http.put(ds(gw, "chat/room-1"), json=[{"hi": 1}])
    await gw.append("s", EVENTS)
    listed = (await gw.http.get(f"{gw.base}/v1/projects/p/sessions", params={"limit": 100})).json()["items"]
    assert [item["session"] for item in listed] == ["s"]
    metrics = (await gw.http.get(f"{gw.base}/metrics")).text
    assert 'gateway_ds_requests_total{method="PUT",status="201"} 1.0' in metrics


async def test_access_is_the_projects(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("a-secret a\nb-secret b\n")
    async with run_gateway(tmp_path / "state", auth="token", tokens_file=str(tokens)) as gw:
        def bearer(token: str) -> dict[str, str]:
            return {"authorization": f"Bearer {token}"}

        url = ds(gw, "notes", project="a")
        anonymous = await gw.http.put(url, content=b"x", headers={"content-type": "text/plain"})
        assert anonymous.status_code == 401 and anonymous.json()["error"]["code"] == "unauthenticated"
        assert anonymous.headers["x-content-type-options"] == "nosniff"  # refusals carry the protocol's headers
        assert (await gw.http.put(url, content=b"x", headers={"content-type": "text/plain",
                                                               **bearer("b-secret")})).status_code == 403
        made = await gw.http.put(url, content=b"x", headers={"content-type": "text/plain", **bearer("a-secret")})
        assert made.status_code == 201
        assert (await gw.http.get(url, headers=bearer("a-secret"))).content == b"x"
        assert (await gw.http.get(url, headers=bearer("b-secret"))).status_code == 403
        assert (await gw.http.get(url, params={"token": "a-secret"})).content == b"x"
        assert (await gw.http.get(ds(gw, "notes", project="b"), headers=bearer("b-secret"))).status_code == 404
        await gw.http.post(f"{gw.base}/v1/projects/a/sessions/s/events", json=EVENTS, headers=bearer("a-secret"))
        assert (await gw.http.get(ds(gw, "sessions/s", project="b"), headers=bearer("b-secret"))).status_code == 404
        forked = await gw.http.put(ds(gw, "copy", project="b"), headers={
            "stream-forked-from": "/ds/a/v1/stream/notes", **bearer("b-secret")})
        assert forked.status_code == 404  # another project's stream is no source


async def test_the_guards_of_every_route_hold(gw: RunningGateway) -> None:
    url = ds(gw, "x")
    cross = await gw.http.put(url, content=b"x", headers={"content-type": "text/plain", "origin": "https://evil.test"})
    assert cross.status_code == 403 and cross.json()["error"]["code"] == "origin_not_allowed"
    rebound = await gw.http.get(url, headers={"host": "evil.test"})
    assert rebound.status_code == 400
    assert (await gw.http.put(url, content=b"x" * 100, headers={"content-type": "text/plain"})).status_code == 201
    preflight = await gw.http.options(url, headers={"origin": "https://evil.test",
                                                    "access-control-request-method": "PUT"})
    assert "access-control-allow-origin" not in preflight.headers


async def test_a_body_over_the_limit_is_413(gateway_factory: Factory) -> None:
    async with gateway_factory(max_body_bytes=1000) as gw:
        resp = await gw.http.put(ds(gw, "big"), content=b"x" * 1001, headers={"content-type": "text/plain"})
        assert resp.status_code == 413
        assert (await gw.http.get(ds(gw, "big"))).status_code == 404


async def test_a_draining_gateway_ends_its_live_reads(gateway_factory: Factory) -> None:
    async with gateway_factory(heartbeat_interval=600) as gw:  # a long-poll would wait 10 minutes
        await gw.http.put(ds(gw, "live"), json=[{"n": 1}])
        tail = (await gw.http.head(ds(gw, "live"))).headers["stream-next-offset"]
        answers: list[httpx.Response] = []
        async with anyio.create_task_group() as tg:
            async def long_poll() -> None:
                answers.append(await gw.http.get(ds(gw, "live"), params={"offset": tail, "live": "long-poll"}))

            async def sse() -> None:
                async with gw.http.stream("GET", ds(gw, "live"), params={"offset": "-1", "live": "sse"}) as resp:
                    answers.append(resp)
                    await resp.aread()  # ends once the gateway ends the response

            tg.start_soon(long_poll)
            tg.start_soon(sse)
            while sum(log.waiters for log in gw.gateway.store.logs.values()) < 4:  # type: ignore[attr-defined]
                # both reads wait, each on the stream's data and state logs
                await anyio.sleep(0.01)
            gw.gateway.draining.set()
        statuses = sorted(a.status_code for a in answers)
        assert statuses == [200, 204]
        assert b'"upToDate":true' in next(a for a in answers if a.status_code == 200).content
        refused = await gw.http.get(ds(gw, "live"), params={"offset": tail, "live": "long-poll"})
        assert refused.status_code == 503


async def test_a_stream_deleted_and_made_again_does_not_take_old_offsets(gw: RunningGateway) -> None:
    first = await gw.http.put(ds(gw, "again"), content=b"old", headers=TEXT)
    old = first.headers["stream-next-offset"]
    assert (await gw.http.delete(ds(gw, "again"))).status_code == 204
    assert (await gw.http.get(ds(gw, "again"))).status_code == 404
    again = await gw.http.put(ds(gw, "again"), content=b"new", headers=TEXT)
    assert again.status_code == 201 and again.headers["stream-next-offset"] != old
    assert (await gw.http.get(ds(gw, "again"), params={"offset": old})).status_code == 410
    assert (await gw.http.get(ds(gw, "again"))).content == b"new"


@pytest.mark.files_only
async def test_two_processes_on_one_state_dir_take_each_producer_append_once(tmp_path: Path) -> None:
    state = tmp_path / "state"
    async with spawn_gateway(state) as a, spawn_gateway(state) as b, httpx.AsyncClient(verify=TLS, timeout=30) as http:
        url = f"{a.base}/ds/p/v1/stream/shared"
        assert (await http.put(url, headers=TEXT)).status_code == 201
        statuses: list[int] = []

        async def send(base: str, seq: int) -> None:
            headers = {**TEXT, "producer-id": "w", "producer-epoch": "0", "producer-seq": str(seq)}
            resp = await http.post(f"{base}/ds/p/v1/stream/shared", content=b"%d," % seq, headers=headers)
            statuses.append(resp.status_code)

        for seq in range(40):  # each append sent to both processes at once, as a retry racing its original
            async with anyio.create_task_group() as tg:
                tg.start_soon(send, a.base, seq)
                tg.start_soon(send, b.base, seq)
        assert sorted(statuses) == [200] * 40 + [204] * 40
        assert (await http.get(f"{b.base}/ds/p/v1/stream/shared")).content == b"".join(b"%d," % i for i in range(40))


@pytest.mark.files_only
async def test_a_live_read_on_one_process_gets_an_append_made_through_another(tmp_path: Path) -> None:
    state = tmp_path / "state"
    # a's long-poll would wait 10 minutes: only a wake by b's append (inotify, or the poll loop) answers it
    async with spawn_gateway(state, GATEWAY_HEARTBEAT_INTERVAL="600") as a, spawn_gateway(state) as b, \
            httpx.AsyncClient(verify=TLS, timeout=120) as http:
        url_a, url_b = f"{a.base}/ds/p/v1/stream/across", f"{b.base}/ds/p/v1/stream/across"
        tail = (await http.put(url_a, json=[{"n": 0}])).headers["stream-next-offset"]
        polled: list[httpx.Response] = []

        async def long_poll() -> None:
            polled.append(await http.get(url_a, params={"offset": tail, "live": "long-poll"}))

        with anyio.fail_after(60):  # a wake that never comes, not a timing check
            async with anyio.create_task_group() as tg:
                tg.start_soon(long_poll)
                for n in range(1, 200):  # until the poll answers: each append is one more chance to wake it
                    await http.post(url_b, json=[{"n": n}])
                    if polled:
                        break
                    await anyio.sleep(0.05)
        assert polled[0].status_code == 200 and polled[0].json()[0] == {"n": 1}
