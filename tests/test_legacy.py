"""Migration of legacy `messages.jsonl` logs (PROTOCOL §1), through FileStore and the real server."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.store.files import FileStore
from gateway.store.layout import LEGACY_NAME, LOG_NAME, write_meta
from gateway.store.legacy import snapshot_event
from tests.conftest import run_gateway

pytestmark = [pytest.mark.anyio, pytest.mark.server]

LEGACY = [
    {"type": "user_message", "payload": {"id": "u1", "content": "hello"}},
    {"type": "agent.message", "payload": {"id": "a1", "content": {"type": "text_block", "text": "hi there"}}},
    {"type": "agent.message", "payload": {"id": "a2", "content": {"type": "tool_use", "name": "ls"}}},
    {"type": "system.event", "payload": {"what": "started"}},
    {"type": "user_message", "payload": {"content": "no id"}},
]
MESSAGES = [
    {"id": "u1", "role": "user", "content": "hello"},
    {"id": "a1", "role": "assistant", "content": "hi there"},
    {"id": "legacy-5", "role": "user", "content": "no id"},
]


def seed(root: Path, session: str, legacy: list[Any] | bytes, log: bytes | None = None,
         project: str | None = "p") -> Path:
    d = root / "sessions" / session
    d.mkdir(parents=True)
    raw = legacy if isinstance(legacy, bytes) else b"".join(orjson.dumps(x) + b"\n" for x in legacy)
    (d / LEGACY_NAME).write_bytes(raw)
    if log is not None:
        (d / LOG_NAME).write_bytes(log)
    if project is not None:
        write_meta(d, {"project": project, "epoch": "abcdef12", "createdAt": 1})
    return d


def owner(d: Path) -> Any:
    return orjson.loads((d / "meta.json").read_bytes())["project"]


def lines_of(d: Path) -> list[dict[str, Any]]:
    path = d / LOG_NAME
    return [orjson.loads(x) for x in path.read_bytes().splitlines()] if path.exists() else []


async def open_once(root: Path, session: str = "s") -> None:
    store = FileStore(root, fsync=True, max_event_bytes=1 << 20)
    try:
        await store.open("p", session, create=False)
    finally:
        store.close()


async def test_conversion_rules_and_snapshot_shape(tmp_path: Path) -> None:
    d = seed(tmp_path, "s", LEGACY)
    before = int(time.time() * 1000)
    await open_once(tmp_path)
    after = int(time.time() * 1000)
    (snap,) = lines_of(d)
    assert set(snap) == {"type", "threadId", "runId", "timestamp", "messages"}
    assert (snap["type"], snap["threadId"], snap["runId"]) == ("MESSAGES_SNAPSHOT", "s", "legacy-migration")
    assert before <= snap["timestamp"] <= after  # milliseconds
    assert snap["messages"] == MESSAGES
    assert not (d / LEGACY_NAME).exists()
    assert (d / f"{LEGACY_NAME}.migrated").read_bytes() == b"".join(orjson.dumps(x) + b"\n" for x in LEGACY)


async def test_no_convertible_messages_writes_no_event_but_renames(tmp_path: Path) -> None:
    d = seed(tmp_path, "s", [LEGACY[2], LEGACY[3]])
    await open_once(tmp_path)
    assert not (d / LOG_NAME).exists() or (d / LOG_NAME).read_bytes() == b""
    assert (d / f"{LEGACY_NAME}.migrated").exists() and not (d / LEGACY_NAME).exists()
    e = seed(tmp_path, "e", b"")
    await open_once(tmp_path, "e")
    assert lines_of(e) == [] and (e / f"{LEGACY_NAME}.migrated").exists()


async def test_existing_log_keeps_its_seqs_and_the_snapshot_goes_last(tmp_path: Path) -> None:
    existing = b'{"type":"A","n":1}\n{"type":"B","n":2}\n'
    d = seed(tmp_path, "s", LEGACY, log=existing)
    await open_once(tmp_path)
    data = (d / LOG_NAME).read_bytes()
    assert data.startswith(existing)
    events = lines_of(d)
    assert [e["type"] for e in events] == ["A", "B", "MESSAGES_SNAPSHOT"]
    assert events[2]["messages"] == MESSAGES


async def test_existing_log_with_a_torn_tail_is_repaired_before_the_snapshot(tmp_path: Path) -> None:
    d = seed(tmp_path, "s", LEGACY, log=b'{"type":"A"}\n{"type":"tor')
    await open_once(tmp_path)
    assert [e["type"] for e in lines_of(d)] == ["A", "MESSAGES_SNAPSHOT"]
    assert (d / f"{LOG_NAME}.torn-13").read_bytes() == b'{"type":"tor'


async def test_second_open_does_nothing(tmp_path: Path) -> None:
    d = seed(tmp_path, "s", LEGACY)
    await open_once(tmp_path)
    state = {p.name: p.read_bytes() for p in d.iterdir() if p.suffix != ".idx"}
    await open_once(tmp_path)
    assert {p.name: p.read_bytes() for p in d.iterdir() if p.suffix != ".idx"} == state
    # even if a new messages.jsonl never shows up again, the .migrated one is never read again
    assert len(lines_of(d)) == 1


async def test_crash_between_append_and_rename_does_not_append_twice(tmp_path: Path) -> None:
    existing = b'{"type":"A"}\n'
    line = snapshot_event("s", MESSAGES, 1_700_000_000_000)
    d = seed(tmp_path, "s", LEGACY, log=existing + line + b"\n")
    await open_once(tmp_path)
    assert (d / LOG_NAME).read_bytes() == existing + line + b"\n"
    assert not (d / LEGACY_NAME).exists() and (d / f"{LEGACY_NAME}.migrated").exists()


async def test_crash_before_the_append_migrates_once(tmp_path: Path) -> None:
    d = seed(tmp_path, "s", LEGACY, log=b"")
    await open_once(tmp_path)
    await open_once(tmp_path)
    events = lines_of(d)
    assert [e["type"] for e in events] == ["MESSAGES_SNAPSHOT"] and events[0]["messages"] == MESSAGES


async def test_crash_during_the_append_of_the_snapshot_migrates_once(tmp_path: Path) -> None:
    line = snapshot_event("s", MESSAGES, 1_700_000_000_000)
    d = seed(tmp_path, "s", LEGACY, log=b'{"type":"A"}\n' + line[:40])  # torn snapshot, no newline
    await open_once(tmp_path)
    events = lines_of(d)
    assert [e["type"] for e in events] == ["A", "MESSAGES_SNAPSHOT"]
    assert events[1]["messages"] == MESSAGES
    assert not (d / LEGACY_NAME).exists()


async def test_corrupt_legacy_lines_are_skipped(tmp_path: Path) -> None:
    raw = b"garbage\n" + orjson.dumps(LEGACY[0]) + b"\n\n[1,2]\n" + orjson.dumps({"type": "user_message"}) + b"\n"
    d = seed(tmp_path, "s", raw)
    await open_once(tmp_path)
    assert lines_of(d)[0]["messages"] == [{"id": "u1", "role": "user", "content": "hello"}]


async def test_migration_through_the_server(tmp_path: Path) -> None:
    root = tmp_path / "state"
    d = seed(root, "legacy", LEGACY, log=b'{"type":"RUN_STARTED","threadId":"legacy","runId":"r0"}\n',
             project=None)  # a volume from before the gateway: no meta.json
    async with run_gateway(root) as g:  # GATEWAY_AUTH=none: every caller reads it, the first write claims it
        resp = await g.http.get(g.events_url("legacy"), headers={"accept": "application/x-ndjson"})
        assert resp.status_code == 200, resp.text
        assert owner(d) is None
        rows = [orjson.loads(x) for x in resp.content.splitlines()]
        assert [r["seq"] for r in rows] == [1, 2]
        assert rows[0]["event"]["type"] == "RUN_STARTED"
        snap = rows[1]["event"]
        assert snap["type"] == "MESSAGES_SNAPSHOT" and snap["threadId"] == "legacy"
        assert snap["runId"] == "legacy-migration" and snap["messages"] == MESSAGES
        assert (d / f"{LEGACY_NAME}.migrated").exists() and not (d / LEGACY_NAME).exists()
        r = await g.append("legacy", [{"type": "X"}])
        assert r["first"].endswith("-3") and owner(d) == "p"
        status = (await g.http.get(f"{g.base}/v1/projects/p/sessions/legacy")).json()
        assert status["events"] == 3
    async with run_gateway(root) as g:  # after a restart: nothing migrates again
        resp = await g.http.get(g.events_url("legacy"), headers={"accept": "application/x-ndjson"})
        assert [orjson.loads(x)["event"]["type"] for x in resp.content.splitlines()] == [
            "RUN_STARTED", "MESSAGES_SNAPSHOT", "X"]


async def test_unclaimed_folders_are_shown_to_admins_only_and_claimed_by_a_write(tmp_path: Path) -> None:
    """A legacy folder no project owns is neither listed nor served to a project's token (404, as
    a free name); an admin token sees it in every project and reads it without claiming it; an
    append or a DELETE by an authorized caller claims it for the caller's project."""
    root, tokens = tmp_path / "state", tmp_path / "tokens"
    old, old2 = seed(root, "old", LEGACY, project=None), seed(root, "old2", LEGACY, project=None)
    tokens.write_text("admin-secret *\na-secret a\nb-secret b\n")

    def auth(who: str) -> dict[str, str]:
        return {"authorization": f"Bearer {who}-secret"}

    async with run_gateway(root, auth="token", tokens_file=str(tokens)) as g:
        async def listed(project: str, who: str) -> dict[str, bool]:
            resp = await g.http.get(f"{g.base}/v1/projects/{project}/sessions", headers=auth(who))
            return {item["session"]: item["claimed"] for item in resp.json()["items"]}

        async def status(project: str, who: str, session: str = "old") -> int:
            url = f"{g.base}/v1/projects/{project}/sessions/{session}"
            return (await g.http.get(url, headers=auth(who))).status_code

        assert await listed("a", "a") == {} and await status("a", "a") == 404
        stream = await g.http.get(g.events_url("old", "a"), headers={**auth("a"), "accept": "application/x-ndjson"})
        assert stream.status_code == 404
        assert await listed("a", "admin") == {"old": False, "old2": False}
        assert await status("a", "admin") == 200 and owner(old) is None  # read, not claimed

        resp = await g.http.post(g.events_url("old", "b"), json=[{"type": "X"}], headers=auth("b"))
        assert resp.status_code == 201 and owner(old) == "b"
        assert (await status("b", "b"), await status("a", "a")) == (200, 404)
        assert await listed("b", "b") == {"old": True} and await listed("a", "admin") == {"old2": False}
        assert (await g.http.delete(g.events_url("old2", "a"), headers=auth("a"))).status_code == 200
        assert owner(old2) == "a" and await status("a", "a", "old2") == 200
