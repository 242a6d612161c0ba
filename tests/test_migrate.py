"""`agui-gateway migrate`: a state dir's sessions into NATS JetStream and back, with the same
events, skipped lines, epochs and cursors; safe to run again, and after a SIGKILL part way."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
import websockets

from gateway.store.cursor import new_epoch
from gateway.store.nats import layout
from gateway.store.nats.conn import NatsConn
from tests.conftest import run_gateway
from tests.events import evs
from tests.natsserver import NatsServer
from tests.streamclient import Seen, ws_read_all

pytestmark = [pytest.mark.anyio, pytest.mark.server]

MAX_EVENT = 1000


def migrate(nats: NatsServer, stream: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **nats.env(stream)}
    return subprocess.run([sys.executable, "-m", "gateway", "migrate", "--max-event-bytes", str(MAX_EVENT), *args],
                          env=env, capture_output=True, text=True, timeout=120)


def start_migrate(nats: NatsServer, stream: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "gateway", "migrate", *args], env={**os.environ, **nats.env(stream)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


async def messages(nats: NatsServer, stream: str, *, count: bool = True) -> dict[str, int]:
    """Messages per session subject (-1 each without `count`)."""
    conn = NatsConn((nats.url,), stream, 1)
    await conn.connect()
    try:
        subjects = await conn.subjects(stream, f"{stream}.e.>")
        return {s: len(await conn.get_batch(s, 1, batch=10_000, max_bytes=1 << 26)) if count else -1
                for s in subjects}
    finally:
        await conn.aclose()


async def read_all(g: Any, session: str, project: str, query: str = "follow=0") -> Seen:
    seen, code, _ = await ws_read_all(f"{g.events_url(session, project, ws=True)}?{query}")
    assert code == 1000
    return seen


def visible(seen: Seen) -> tuple[list[int], list[dict[str, Any]], list[dict[str, Any]], str | None]:
    return seen.seqs, seen.events, seen.controls, seen.cursor


async def test_files_to_nats_and_back_keep_events_skipped_lines_epochs_and_cursors(
        tmp_path: Path, nats: NatsServer) -> None:
    stream = f"M{secrets.token_hex(5).upper()}"
    a, b = tmp_path / "a", tmp_path / "b"
    async with run_gateway(a, max_event_bytes=MAX_EVENT) as files_gw:
        await files_gw.append("s", evs(1, 5))
        with open(a / "sessions" / "s" / "agui-events.jsonl", "ab") as log:  # another writer's bad lines
            log.write(b'{"type": "TEXT_MESSAGE_CONTENT", "torn\n' + orjson.dumps({"pad": "x" * MAX_EVENT}) + b"\n")
        await files_gw.append("s", evs(6, 3))
        await files_gw.append("t", evs(1, 2), project="q")
        assert (await files_gw.http.delete(files_gw.events_url("t", "q"))).status_code in (200, 204)
        await files_gw.append("t", evs(100, 4), project="q")
        before = {s: visible(await read_all(files_gw, s, p)) for s, p in (("s", "p"), ("t", "q"))}
        meta_path = a / "sessions" / "t" / "meta.json"  # a name given by the platform backend
        meta_path.write_bytes(orjson.dumps({**orjson.loads(meta_path.read_bytes()), "displayName": "Tee"}))
        listed = (await files_gw.http.get(f"{files_gw.base}/v1/projects/q/sessions")).json()["items"]
    assert listed[0]["displayName"] == "Tee"
    assert [c["reason"] for c in before["s"][2] if c.get("control") == "skipped"] == ["corrupt", "oversize"]
    with open(a / "sessions" / "s" / "agui-events.jsonl", "ab") as log:
        log.write(b'{"type": "RUN_STA')  # a torn tail: never visible, never copied
    file_bytes = {s: (a / "sessions" / s / "agui-events.jsonl").read_bytes() for s in ("s", "t")}

    first = migrate(nats, stream, "--to", "nats", str(a))
    assert first.returncode == 0, first.stderr
    assert sorted(first.stdout.splitlines()) == ["s: copied (10 events, 0.0 MB)", "t: copied (4 events, 0.0 MB)"]
    counts = await messages(nats, stream)
    assert counts == {f"{stream}.e.s": 2, f"{stream}.e.t": 2}  # a marker and one packed message each
    again = migrate(nats, stream, "--to", "nats", str(a))
    assert again.returncode == 0, again.stderr
    assert sorted(again.stdout.splitlines()) == ["s: up to date", "t: up to date"]
    assert await messages(nats, stream) == counts

    back = migrate(nats, stream, "--from", "nats", str(b))
    assert back.returncode == 0, back.stderr
    assert sorted(back.stdout.splitlines()) == ["s: copied (10 events, 0.0 MB)", "t: copied (4 events, 0.0 MB)"]
    assert migrate(nats, stream, "--from", "nats", str(b)).stdout.splitlines() == ["s: up to date", "t: up to date"]
    for s in ("s", "t"):
        copied = (b / "sessions" / s / "agui-events.jsonl").read_bytes()
        assert file_bytes[s] == copied + (b'{"type": "RUN_STA' if s == "s" else b"")
        meta_a, meta_b = (orjson.loads((d / "sessions" / s / "meta.json").read_bytes()) for d in (a, b))
        assert meta_b == meta_a
    assert not (b / "migrating").exists()

    async with run_gateway(b, max_event_bytes=MAX_EVENT) as files_b:
        for s, p in (("s", "p"), ("t", "q")):
            assert visible(await read_all(files_b, s, p)) == before[s]

    async with run_gateway(tmp_path / "empty", max_event_bytes=MAX_EVENT,
                           **nats.settings(nats_stream=stream)) as nats_gw:
        # listed before anything opened them: migrate wrote their entries
        assert (await nats_gw.http.get(f"{nats_gw.base}/v1/projects/q/sessions")).json()["items"] == listed
        for s, p in (("s", "p"), ("t", "q")):
            assert visible(await read_all(nats_gw, s, p)) == before[s]
        status = (await nats_gw.http.get(nats_gw.events_url("s", "p").removesuffix("/events"))).json()
        assert status.get("skipped") == 2
        # a follower resumes on the NATS gateway from a cursor the file gateway gave, then follows
        _, events_s, _, cursor_s = before["s"]
        epoch = str(cursor_s).rsplit("-", 1)[0]
        async with websockets.connect(f"{nats_gw.events_url('s', 'p', ws=True)}?after={epoch}-3",
                                      compression=None) as ws:
            seen = Seen()
            while not seen.control("live"):
                seen.take_frame(await ws.recv())
            assert (await nats_gw.append("s", evs(9, 1)))["first"] == f"{epoch}-11"
            while seen.last_seq < 11:
                seen.take_frame(await ws.recv())
        assert seen.seqs == list(range(4, 12))
        assert seen.events == events_s[3:] + evs(9, 1)
        assert [c["cursor"] for c in seen.control("skipped")] == [f"{epoch}-6", f"{epoch}-7"]


def write_session(root: Path, name: str, events: int) -> bytes:
    folder = root / "sessions" / name
    folder.mkdir(parents=True)
    (folder / "meta.json").write_bytes(orjson.dumps({"project": "p", "epoch": new_epoch(), "createdAt": 1}))
    data = b"".join(orjson.dumps({"type": "TEXT_MESSAGE_CONTENT", "n": n, "delta": "y" * 100}) + b"\n"
                    for n in range(events))
    (folder / "agui-events.jsonl").write_bytes(data)
    return data


async def test_a_migration_killed_part_way_finishes_on_a_rerun_without_gaps_or_duplicates(
        tmp_path: Path, nats: NatsServer) -> None:
    stream = f"K{secrets.token_hex(5).upper()}"
    state = tmp_path / "state"
    logs = {f"s{i:02d}": write_session(state, f"s{i:02d}", 20_000 if i == 0 else 300) for i in range(40)}
    proc = start_migrate(nats, stream, "--to", "nats", str(state))
    with anyio.fail_after(60):
        while len(await messages(nats, stream, count=False)) < 8:
            assert proc.poll() is None, proc.communicate()
            await anyio.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    started = len(await messages(nats, stream))
    assert 8 <= started < len(logs)  # killed part way

    rerun = migrate(nats, stream, "--to", "nats", str(state))
    assert rerun.returncode == 0, rerun.stderr
    statuses = [line.split(": ")[1].split(" (")[0] for line in rerun.stdout.splitlines()]
    assert statuses.count("up to date") >= started - 1 and statuses.count("copied") >= len(logs) - started

    more = b"".join(orjson.dumps({"type": "TEXT_MESSAGE_CONTENT", "late": n}) + b"\n" for n in range(50))
    with open(state / "sessions" / "s01" / "agui-events.jsonl", "ab") as log:  # appended since: a rerun copies it
        log.write(more)
    logs["s01"] += more
    caught_up = migrate(nats, stream, "--to", "nats", str(state)).stdout.splitlines()
    assert caught_up[1] == "s01: copied (50 events, 0.0 MB)" and caught_up.count("s02: up to date") == 1

    conn = NatsConn((nats.url,), stream, 1)
    await conn.connect()
    try:
        for name, data in logs.items():
            subject = layout.log_subject(stream, name)
            got = await conn.get_batch(subject, 1, batch=10_000, max_bytes=64 * 1024 * 1024)
            placed = [layout.placed(m.sseq, m.headers, len(m.data)) for m in got]
            assert all(p is not None for p in placed)
            assert [p.marker for p in placed if p] == [True] + [False] * (len(placed) - 1)
            seq = offset = 0
            for p in placed[1:]:
                assert p and (p.first, p.offset) == (seq + 1, offset)  # contiguous: no gap, no duplicate
                seq, offset = p.last, p.end
            assert seq == data.count(b"\n") and b"".join(m.data for m in got) == data
        assert len(await conn.get_batch(layout.log_subject(stream, "s00"), 1, batch=1000, max_bytes=1 << 26)) > 2
    finally:
        await conn.aclose()

    (state / "sessions" / "zz").mkdir()
    (state / "sessions" / "zz" / "meta.json").write_bytes(b"{not json")
    meta = state / "sessions" / "s02" / "meta.json"  # reset on the files side after it was copied
    meta.write_bytes(orjson.dumps({**orjson.loads(meta.read_bytes()), "epoch": new_epoch()}))
    refused = migrate(nats, stream, "--to", "nats", str(state))
    assert refused.returncode == 1
    lines = refused.stdout.splitlines()
    assert lines[2].startswith("s02: refused: NATS holds epoch ")
    assert lines[-1].startswith("zz: refused: cannot be read")
    assert lines.count("s03: up to date") == 1 and "2 left as they were" in refused.stderr


async def test_nats_unreachable_is_refused_clearly(tmp_path: Path, nats: NatsServer) -> None:
    write_session(tmp_path, "s", 3)
    result = subprocess.run([sys.executable, "-m", "gateway", "migrate", "--to", "nats", str(tmp_path),
                             "--nats-url", "nats://127.0.0.1:1"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 4
    assert "cannot connect to NATS at nats://127.0.0.1:1" in result.stderr
