"""The installed `agui-gateway` console script against a real gateway (replay, append, export, exit codes)."""

from __future__ import annotations

import os
import pty
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
from anyio.streams.text import TextReceiveStream

from gateway.cli import EXIT_HTTP, EXIT_INTERRUPTED, EXIT_UNREACHABLE, EXIT_USAGE
from tests.conftest import RunningGateway, free_port

pytestmark = [pytest.mark.anyio, pytest.mark.server]

SCRIPT = str(Path(sys.executable).with_name("agui-gateway"))
EVENTS: list[dict[str, Any]] = [
    {"type": "RUN_STARTED", "threadId": "s", "runId": "r1"},
    {"type": "TEXT_MESSAGE_CONTENT", "messageId": "m1", "delta": "héllo, wörld ✓"},
    *({"type": "CUSTOM", "name": "n", "value": i} for i in range(200)),
    {"type": "RUN_FINISHED", "threadId": "s", "runId": "r1"},
]


def session_url(g: RunningGateway, session: str = "s", project: str = "p") -> str:
    return f"{g.base}/v1/projects/{project}/sessions/{session}"


def log_bytes(g: RunningGateway, session: str = "s") -> bytes:
    return (g.settings.state_dir / "sessions" / session / "agui-events.jsonl").read_bytes()


async def cli(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    with anyio.fail_after(60):
        return await anyio.run_process([SCRIPT, *args], input=stdin, check=False)


async def test_replay_writes_the_log_and_a_summary_without_progress_when_not_a_terminal(
    gw: RunningGateway, tmp_path: Path
) -> None:
    await gw.append("s", EVENTS)
    done = await cli("replay", session_url(gw))
    assert done.returncode == 0, done.stderr
    assert done.stdout == log_bytes(gw)
    assert b"\r" not in done.stderr and b"\x1b[" not in done.stderr
    last = (await gw.http.get(session_url(gw))).json()["head"]
    assert f"last cursor {last}".encode() in done.stderr

    out = tmp_path / "out.jsonl"
    third = (await gw.http.get(session_url(gw))).json()["epoch"] + "-3"
    done = await cli("replay", session_url(gw) + "/events", "--after", third, "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert out.read_bytes() == b"".join(log_bytes(gw).splitlines(keepends=True)[3:])


async def test_replay_draws_progress_on_a_terminal(gw: RunningGateway, tmp_path: Path) -> None:
    await gw.append("s", EVENTS)
    master, slave = pty.openpty()
    try:
        with anyio.fail_after(60):
            proc = await anyio.open_process([SCRIPT, "replay", session_url(gw), "--out", str(tmp_path / "o")],
                                            stderr=slave)
            os.close(slave)
            await proc.wait()
            stderr = await anyio.to_thread.run_sync(read_pty, master)
    finally:
        os.close(master)
    assert proc.returncode == 0, stderr
    assert f"{len(EVENTS)}/{len(EVENTS)} events".encode() in stderr
    assert b"ev/s" in stderr and b"\r\x1b[K" in stderr


def read_pty(fd: int) -> bytes:
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO once the child's side is closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


async def test_replay_follow_streams_live_events_until_interrupted(gw: RunningGateway) -> None:
    await gw.append("s", EVENTS[:2])
    with anyio.fail_after(60):
        async with await anyio.open_process([SCRIPT, "replay", session_url(gw), "--follow"]) as proc:
            assert proc.stdout is not None and proc.stderr is not None
            errors = TextReceiveStream(proc.stderr)
            text = ""
            while "caught up" not in text:
                text += await errors.receive()
            await gw.append("s", [{"type": "CUSTOM", "name": "live", "value": 1}])
            received = b""
            while received.count(b"\n") < 3:
                received += await proc.stdout.receive()
            proc.send_signal(signal.SIGINT)
            assert await proc.wait() == EXIT_INTERRUPTED
    assert received == log_bytes(gw)


async def test_append_file_and_stdin_then_export(gw: RunningGateway, tmp_path: Path) -> None:
    ndjson = tmp_path / "events.ndjson"
    ndjson.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in EVENTS[:3]))
    done = await cli("append", session_url(gw), str(ndjson))
    assert done.returncode == 0, done.stderr
    assert orjson.loads(done.stdout)["count"] == 3
    pretty = orjson.dumps(EVENTS[3:], option=orjson.OPT_INDENT_2)
    done = await cli("append", session_url(gw), "-", stdin=pretty)
    assert done.returncode == 0, done.stderr
    assert orjson.loads(done.stdout)["count"] == len(EVENTS) - 3

    done = await cli("export", session_url(gw))
    assert done.returncode == 0, done.stderr
    assert done.stdout == log_bytes(gw)
    out = tmp_path / "s.json"
    done = await cli("export", session_url(gw), "--format", "json", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert orjson.loads(out.read_bytes()) == EVENTS


async def test_exit_codes(gw: RunningGateway, tmp_path: Path) -> None:
    await gw.append("s", EVENTS[:1])
    events_file = tmp_path / "e.json"
    events_file.write_bytes(orjson.dumps(EVENTS[:1]))
    dead = f"http://127.0.0.1:{free_port()}/v1/projects/p/sessions/s"
    cases = [
        (["replay", session_url(gw, "missing")], EXIT_HTTP, b"404"),
        (["export", session_url(gw, "missing")], EXIT_HTTP, b"404"),
        (["append", session_url(gw, "s", project="other"), str(events_file)], EXIT_HTTP, b"409"),
        (["append", session_url(gw, "s"), "-"], EXIT_HTTP, b"400"),
        (["replay", dead, "--retries", "0"], EXIT_UNREACHABLE, b"cannot reach"),
        (["append", dead, str(events_file)], EXIT_UNREACHABLE, b"cannot reach"),
        (["export", dead], EXIT_UNREACHABLE, b"cannot reach"),
        (["replay", f"{gw.base}/v1/projects/p"], EXIT_USAGE, b"not a session URL"),
        (["replay"], EXIT_USAGE, b"usage"),
    ]
    for args, code, message in cases:
        done = await cli(*args, stdin=b"not json\n")
        assert (done.returncode, message in done.stderr) == (code, True), (args, done.stderr)
