"""The sidecar of compact runs over real logs: built, reused, and rebuilt whenever it does not hold.

The reference is the compactor run over the log's finished runs in one pass: whatever state the
sidecar was found in, what it serves afterwards must be exactly that.
"""

from __future__ import annotations

import os
import shutil
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.store.filelog import FileLog
from gateway.store.files import FileStore
from gateway.store.layout import LOG_NAME
from gateway.stream.compact import Compactor, Event
from gateway.stream.framing import Skipped
from gateway.stream.sidecar import SIDECAR_NAME, Compact, Sidecar, read_body

pytestmark = [pytest.mark.anyio, pytest.mark.unit]


def run(r: int, messages: int = 3, words: int = 40, finished: bool = True) -> list[bytes]:
    """One run: messages streamed word by word, a tool call, and its end."""
    events: list[dict[str, Any]] = [{"type": "RUN_STARTED", "threadId": "t", "runId": f"r{r}"}]
    for m in range(messages):
        mid = f"r{r}m{m}"
        events.append({"type": "TEXT_MESSAGE_START", "messageId": mid, "role": "assistant"})
        events += [{"type": "TEXT_MESSAGE_CONTENT", "messageId": mid, "delta": f"w{w} ", "timestamp": w}
                   for w in range(words)]
        events.append({"type": "TEXT_MESSAGE_END", "messageId": mid})
        events.append({"type": "TOOL_CALL_START", "toolCallId": f"{mid}c", "toolCallName": "f"})
        events += [{"type": "TOOL_CALL_ARGS", "toolCallId": f"{mid}c", "delta": "{\"q\": 1"}, {
            "type": "TOOL_CALL_ARGS", "toolCallId": f"{mid}c", "delta": "}"}]
        events.append({"type": "TOOL_CALL_END", "toolCallId": f"{mid}c"})
    if finished:
        events.append({"type": "RUN_FINISHED", "threadId": "t", "runId": f"r{r}"})
    return [orjson.dumps(e) for e in events]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[FileStore]:
    s = FileStore(tmp_path, fsync=False, max_event_bytes=1 << 20)
    yield s
    s.close()


async def session(store: FileStore, lines: list[bytes], name: str = "s") -> FileLog:
    flog = await store.open("p", name, create=True)
    await flog.append(lines)
    return flog


def expected(lines: list[bytes], upto: int) -> list[tuple[int, bytes]]:
    c = Compactor()
    for seq, line in enumerate(lines[:upto], 1):
        c.feed(seq, line)
    c.finish()
    return [(e.seq, e.data) for e in c.out if isinstance(e, Event)]


async def served(flog: FileLog) -> list[tuple[int, bytes] | Skipped]:
    """Everything the sidecar hands out after being brought up to date, checked for contiguity."""
    sidecar = Sidecar(flog.dir, LOG_NAME)
    records = await sidecar.update(flog)
    fd = os.open(sidecar.path, os.O_RDONLY)
    out: list[tuple[int, bytes] | Skipped] = []
    try:
        seq = 1
        for rec in records:
            assert rec.first == seq
            seq = rec.last + 1
            body = read_body(fd, rec)
            assert body is not None
            if isinstance(body, Compact):
                seqs = [int(s) for s in body.seqs.split(b",")]
                assert seqs[-1] == rec.last
                out += zip(seqs, body.data.split(b"\n"), strict=True)
            else:
                out.append(body)
    finally:
        os.close(fd)
    return out


def sidecar_bytes(flog: FileLog) -> bytes:
    return (flog.dir / SIDECAR_NAME).read_bytes()


async def test_built_once_then_reused(store: FileStore) -> None:
    lines = [line for r in range(30) for line in run(r, messages=4, words=300)] + run(99, finished=False)
    flog = await session(store, lines)
    finished = len(lines) - len(run(99, finished=False))
    assert await served(flog) == expected(lines, finished)  # the unfinished run is not in it
    path = flog.dir / SIDECAR_NAME
    before = (sidecar_bytes(flog), path.stat().st_mtime_ns)
    assert await served(flog) == expected(lines, finished)
    assert (sidecar_bytes(flog), path.stat().st_mtime_ns) == before  # warm: read, not written
    assert sidecar_bytes(flog).count(b"\nE ") == 30  # a record per run, each ending it
    assert len(sidecar_bytes(flog)) < flog.end // 10


async def test_deleted_sidecar_is_rebuilt(store: FileStore) -> None:
    lines = [line for r in range(3) for line in run(r, words=200)]
    flog = await session(store, lines)
    await served(flog)
    first = sidecar_bytes(flog)
    (flog.dir / SIDECAR_NAME).unlink()
    assert await served(flog) == expected(lines, len(lines))
    assert sidecar_bytes(flog) == first


@pytest.mark.parametrize("cut", [1, 10, 30, 200, 0.5, -1])
async def test_truncated_sidecar_is_cut_and_completed(store: FileStore, cut: float) -> None:
    lines = [line for r in range(20) for line in run(r, messages=4, words=300)]
    flog = await session(store, lines)
    await served(flog)
    whole = sidecar_bytes(flog)
    keep = int(len(whole) * cut) if isinstance(cut, float) else (cut if cut > 0 else len(whole) + cut)
    (flog.dir / SIDECAR_NAME).write_bytes(whole[:keep])
    assert await served(flog) == expected(lines, len(lines))
    assert sidecar_bytes(flog) == whole


async def test_append_extends_a_stale_sidecar(store: FileStore) -> None:
    lines = run(0, words=100)
    flog = await session(store, lines)
    assert await served(flog) == expected(lines, len(lines))
    before = sidecar_bytes(flog)
    more = run(1, finished=False)
    await flog.append(more)
    assert await served(flog) == expected(lines, len(lines))  # nothing finished since
    assert sidecar_bytes(flog) == before
    end = [orjson.dumps({"type": "RUN_FINISHED", "threadId": "t", "runId": "r1"})]
    await flog.append(end)
    lines += more + end
    assert await served(flog) == expected(lines, len(lines))
    assert sidecar_bytes(flog).startswith(before)  # extended, not rewritten


async def test_new_epoch_rebuilds(store: FileStore) -> None:
    flog = await session(store, run(0, words=100))
    await served(flog)
    old_epoch = flog.epoch
    await flog.delete()
    lines = run(5, messages=1, words=7)
    await flog.append(lines)
    assert flog.epoch != old_epoch
    assert await served(flog) == expected(lines, len(lines))
    assert sidecar_bytes(flog).startswith(b"AGUI-COMPACT 1 " + flog.epoch.encode() + b"\n")


async def test_sidecar_from_another_log_with_the_same_epoch_is_not_trusted(store: FileStore, tmp_path: Path) -> None:
    """Records that fit inside the log but whose byte ranges are not its lines are found out."""
    a = await session(store, run(0, words=50) + run(1, words=50), "a")
    await served(a)
    b_lines = [line.replace(b'"w', b'"ww') for line in run(0, words=50) + run(1, words=60)]
    b = await session(store, b_lines, "b")
    meta = orjson.loads((b.dir / "meta.json").read_bytes())
    store.close()
    meta["epoch"] = a.epoch
    (b.dir / "meta.json").write_bytes(orjson.dumps(meta))
    shutil.copyfile(a.dir / SIDECAR_NAME, b.dir / SIDECAR_NAME)
    fresh = FileStore(tmp_path, fsync=False, max_event_bytes=1 << 20)
    try:
        b2 = await fresh.open("p", "b", create=False)
        assert b2.epoch == a.epoch
        assert await served(b2) == expected(b_lines, len(b_lines))
    finally:
        fresh.close()


async def test_damaged_record_is_refused(store: FileStore) -> None:
    flog = await session(store, run(0, words=100))
    sidecar = Sidecar(flog.dir, LOG_NAME)
    records = await sidecar.update(flog)
    data = bytearray(sidecar_bytes(flog))
    rec = records[0]
    data[rec.offset + rec.seqs + 5] = ord("\n")  # one more line than the header says
    sidecar.path.write_bytes(bytes(data))
    fd = os.open(sidecar.path, os.O_RDONLY)
    try:
        assert read_body(fd, rec) is None
    finally:
        os.close(fd)


async def test_garbage_header_and_symlink(store: FileStore, tmp_path: Path) -> None:
    lines = run(0, words=30)
    flog = await session(store, lines)
    (flog.dir / SIDECAR_NAME).write_bytes(b"AGUI-COMPACT 1 " + flog.epoch.encode() + b"\nR 1 2 x\n")
    assert await served(flog) == expected(lines, len(lines))
    target = tmp_path / "elsewhere"
    target.write_bytes(b"keep me")
    (flog.dir / SIDECAR_NAME).unlink()
    (flog.dir / SIDECAR_NAME).symlink_to(target)
    assert await served(flog) == expected(lines, len(lines))
    assert target.read_bytes() == b"keep me"  # never followed
    assert not (flog.dir / SIDECAR_NAME).is_symlink()


async def test_skipped_lines_inside_runs(store: FileStore, tmp_path: Path) -> None:
    lines = run(0, messages=1, words=5)
    lines.insert(3, b"not json")
    session_dir = tmp_path / "sessions" / "s"
    session_dir.mkdir(parents=True)
    (session_dir / "meta.json").write_bytes(b'{"project": "p", "epoch": "abcdef1"}')
    (session_dir / LOG_NAME).write_bytes(b"\n".join(lines) + b"\n")
    flog = await store.open("p", "s", create=False)
    got = await served(flog)
    good = [line for line in lines if line != b"not json"]
    assert Skipped(4, "corrupt", 8) in got
    events = [orjson.loads(e[1]) for e in got if isinstance(e, tuple)]
    assert [e["type"] for e in events] == [orjson.loads(x)["type"] for x in good[:3]] + [
        "TEXT_MESSAGE_CONTENT", "TEXT_MESSAGE_END", "TOOL_CALL_START", "TOOL_CALL_ARGS", "TOOL_CALL_END",
        "RUN_FINISHED"]
    assert [e[0] for e in got if isinstance(e, tuple)][:3] == [1, 2, 3]


async def test_a_50_mb_message_is_built_in_bounded_memory(store: FileStore) -> None:
    head = [*run(0, messages=0)[:1], b'{"type":"TEXT_MESSAGE_START","messageId":"big","role":"assistant"}']
    delta = orjson.dumps({"type": "TEXT_MESSAGE_CONTENT", "messageId": "big", "delta": "y" * 1000})
    flog = await session(store, head)
    for _ in range(50):
        await flog.append([delta] * 1000)
    await flog.append([b'{"type":"TEXT_MESSAGE_END","messageId":"big"}',
                       b'{"type":"RUN_FINISHED","threadId":"t","runId":"r0"}'])
    assert flog.end > 50_000_000
    tracemalloc.start()
    try:
        records = await Sidecar(flog.dir, LOG_NAME).update(flog)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * 1024 * 1024, peak  # a few read chunks and one merge piece, not the message
    assert records[-1].last == flog.lines
    got = await served(flog)
    text = sum(len(orjson.loads(e[1])["delta"]) for e in got
               if isinstance(e, tuple) and b"TEXT_MESSAGE_CONTENT" in e[1])
    assert text == 50_000_000
