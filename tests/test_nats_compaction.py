"""Compaction of NATS session logs (gateway/store/nats/compact.py) on a real nats-server: readers
mid-way keep their exact positions, two compactors at once lose and duplicate nothing, and every
cursor resumes at its event afterwards."""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import orjson
import pytest

from gateway.store.nats import compact, layout
from gateway.store.nats.conn import NatsConn
from gateway.store.nats.log import NatsLog
from gateway.store.nats.sessions import SessionDirectory
from gateway.store.nats.store import NatsStore
from tests.natsserver import NatsServer

pytestmark = [pytest.mark.anyio, pytest.mark.server]

LATER = 1 << 62
"""A time (ms) long after the last append."""


@contextlib.asynccontextmanager
async def connections(server: NatsServer, n: int) -> AsyncIterator[list[NatsConn]]:
    """`n` connections (as many replicas) to one stream of its own."""
    stream = f"C{secrets.token_hex(6).upper()}"
    conns = [NatsConn((server.url,), stream, 1) for _ in range(n)]
    try:
        for conn in conns:
            await conn.connect()
        yield conns
    finally:
        for conn in conns:
            await conn.aclose()


async def read_all(nlog: NatsLog, offset: int, end: int, step: int = 1000) -> bytes:
    parts = []
    while offset < end:
        part = await nlog.read(offset, min(step, end - offset))
        assert part, f"nothing at byte {offset}"
        parts.append(part)
        offset += len(part)
    return b"".join(parts)


async def index_entries(conn: NatsConn, session: str) -> list[layout.Placed]:
    got = await conn.get_batch(layout.index_subject(conn.stream, session), 1, batch=10_000, max_bytes=1 << 24)
    return [entry for g in got if (entry := layout.indexed(g.headers)) is not None]


async def test_compaction_keeps_readers_exact_and_two_compactors_lose_and_duplicate_nothing(
        nats: NatsServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "gateway.store.nats")
    monkeypatch.setattr(compact, "CHUNK", 2048)  # many compacted messages from a small log
    monkeypatch.setattr(compact, "AFTER", 8192)
    lines = [orjson.dumps({"type": "CUSTOM", "n": n, "pad": "x" * (n % 40)}) for n in range(600)]
    expected = b"".join(line + b"\n" for line in lines)
    async with connections(nats, 5) as (wc, rc, ac, bc, fc):
        store = NatsStore(wc, tmp_path / "w")
        store.ensure_root()
        await store.directory.ensure_bucket()
        writer = await store.open("p", "s", create=True)
        for n in range(300):  # one event per append
            await writer.append([lines[n]])
        assert writer.compaction_due(LATER)
        await store.poll_all()  # the writing replica compacts what lies behind the live edge
        assert not writer.compaction_due(LATER)
        first = await index_entries(wc, "s")
        assert first and first[-1].last == 299  # all but the live edge (seq 300)
        for n in range(300, 600, 3):  # then appends of three events
            await writer.append(lines[n : n + 3])

        # A reader half-way that knows the originals (as change notices tell them), and has read none.
        reader = NatsLog(rc, "s", tmp_path / "r")
        await reader.refresh()
        for got in await rc.get_batch(layout.log_subject(rc.stream, "s"), 1, batch=10_000, max_bytes=1 << 24):
            placed = layout.placed(got.sseq, got.headers, len(got.data))
            assert placed is not None
            reader.apply(placed)
        half = len(expected) // 2
        head = await read_all(reader, 0, half)

        # Two replicas compact at once.
        a, b = NatsLog(ac, "s", tmp_path / "a"), NatsLog(bc, "s", tmp_path / "b")
        async with anyio.create_task_group() as tg:
            tg.start_soon(a.compact)
            tg.start_soon(b.compact)

        assert "compaction overtaken by another replica" in caplog.messages  # they did race
        assert head + await read_all(reader, half, len(expected)) == expected
        entries = await index_entries(wc, "s")
        assert [e.first for e in entries] == [1] + [e.last + 1 for e in entries[:-1]]  # no gap, no overlap
        assert [e.offset for e in entries] == [0] + [e.end for e in entries[:-1]]
        assert entries[-1].last == 597  # the last append (598..600) is the live edge
        packed = await wc.get_batch(layout.compacted_subject(wc.stream, "s"), 1, batch=10_000, max_bytes=1 << 24)
        assert sorted(g.sseq for g in packed) == [e.sseq for e in entries]  # the losing copies are gone
        originals = await wc.get_batch(layout.log_subject(wc.stream, "s"), 1, batch=10_000, max_bytes=1 << 24)
        assert len(originals) == 1  # only the live edge is left

        # Resume from every cursor on a replica that has seen nothing: the event right after it.
        fresh = NatsLog(fc, "s", tmp_path / "f")
        await fresh.refresh()
        for seq in range(1, 601):
            at = await fresh.offset_of(seq)
            line = (await fresh.read(at, 200)).split(b"\n", 1)[0]
            assert orjson.loads(line)["n"] == seq - 1
        assert await read_all(fresh, 0, len(expected), step=100_000) == expected
        await writer.append([b'{"type":"CUSTOM","n":600}'])  # appends go on after the live edge
        assert (await writer.offset_of(601)) == len(expected)

        # A session list entry made after compaction (none was kept) still has the creation time.
        directory = SessionDirectory(wc)
        directory.bucket, directory.stream = "OTHER", "KV_OTHER"
        await directory.ensure_bucket()
        await directory.ensure("p", "s", None)
        entry = await wc.get(last_by=directory.subject("p", "s"), stream=directory.stream)
        assert entry is not None and orjson.loads(entry.data)["createdAt"] == writer.created_ms

        # migrate --from nats copies the compacted log, and the purged marker's creation time.
        back = tmp_path / "back"
        done = subprocess.run([sys.executable, "-m", "gateway", "migrate", "--from", "nats", str(back)],
                              env={**os.environ, **nats.env(wc.stream)}, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert (back / "sessions" / "s" / "agui-events.jsonl").read_bytes() == expected + b'{"type":"CUSTOM","n":600}\n'
        assert orjson.loads((back / "sessions" / "s" / "meta.json").read_bytes())["createdAt"] == writer.created_ms


async def test_concurrent_appends_share_one_message_and_keep_their_own_seqs(nats: NatsServer, tmp_path: Path) -> None:
    async with connections(nats, 1) as (conn,):
        nlog = NatsLog(conn, "g", tmp_path / "g")
        await nlog.create("p")
        results: dict[int, tuple[int, int]] = {}

        async def append(n: int) -> None:
            lines = [orjson.dumps({"type": "CUSTOM", "n": n, "k": k}) for k in range(n % 3 + 1)]
            got = await nlog.append(lines)
            results[n] = (got.first, got.last)

        async with anyio.create_task_group() as tg:
            for n in range(40):
                tg.start_soon(append, n)
        spans = sorted(results.values())
        assert spans[0][0] == 1 and all(b[0] == a[1] + 1 for a, b in itertools.pairwise(spans))
        body = await read_all(nlog, 0, nlog.end)
        events = [orjson.loads(line) for line in body.splitlines()]
        for n, (first, last) in results.items():  # each append's lines at the seqs it was given, in order
            assert [(e["n"], e["k"]) for e in events[first - 1 : last]] == [(n, k) for k in range(n % 3 + 1)]
        stored = await conn.get_batch(layout.log_subject(conn.stream, "g"), 1, batch=1000, max_bytes=1 << 24)
        assert len(stored) - 1 < 10  # the marker and a few group commits, not 40 messages
