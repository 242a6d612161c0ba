"""Descriptors stay bounded as sessions come and go; running out shows in readiness, not in a flood of logs."""

from __future__ import annotations

import logging
import os
import resource
from pathlib import Path

import httpx
import orjson
import pytest

from gateway.logs import RepeatLimiter
from gateway.store.files import FileStore
from gateway.store.layout import LOG_NAME
from gateway.stream.framing import Batch, Reset
from gateway.stream.reader import LogReader
from tests.conftest import TLS, spawn_gateway

pytestmark = pytest.mark.anyio


def open_fds(pid: int | str = "self") -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def ev(n: int) -> bytes:
    return orjson.dumps({"type": "X", "n": n})


@pytest.mark.unit
async def test_idle_logs_past_the_cap_release_their_descriptors_and_keep_working(tmp_path: Path) -> None:
    store = FileStore(tmp_path, fsync=True, max_event_bytes=1 << 20, max_open_logs=5)
    store.ensure_root()
    before = open_fds()
    for i in range(60):
        await (await store.open("p", f"s{i}", create=True)).append([ev(i)])
    assert open_fds() - before <= 3 * 5 + 3  # not 3 per session: 60 sessions would hold 180
    for i in range(60):  # every session still answers, reopening what it needs
        flog = await store.open("p", f"s{i}", create=False)
        assert (await flog.append([ev(100 + i)])).first == 2
        reader = LogReader(flog)
        await reader.seek()
        items = await reader.read(1 << 16)
        assert [orjson.loads(line)["n"] for item in items if isinstance(item, Batch)
                for line in item.data.split(b"\n")] == [i, 100 + i]
    assert open_fds() - before <= 3 * 5 + 3
    store.close()


@pytest.mark.unit
async def test_a_log_replaced_while_its_descriptors_were_released_gets_a_new_epoch(tmp_path: Path) -> None:
    store = FileStore(tmp_path, fsync=True, max_event_bytes=1 << 20)
    store.ensure_root()
    flog = await store.open("p", "s", create=True)
    await flog.append([ev(1), ev(2)])
    reader = LogReader(flog)
    await reader.seek()
    epoch = flog.epoch
    flog.close()  # what the cap does to an idle log
    flog._state.forget_recent()
    replacement = tmp_path / "other.jsonl"
    replacement.write_bytes(b'{"type":"Y","n":9}\n' * 3)
    os.replace(replacement, flog.path)
    items = await reader.read(1 << 16)
    assert isinstance(items[0], Reset) and flog.epoch != epoch  # never the new file under old offsets
    assert [orjson.loads(line)["n"] for item in items if isinstance(item, Batch)
            for line in item.data.split(b"\n")] == [9, 9, 9]
    store.close()


@pytest.mark.server
async def test_new_sessions_do_not_pile_up_descriptors(tmp_path: Path) -> None:
    async with (spawn_gateway(tmp_path / "state", GATEWAY_MAX_OPEN_LOGS="20") as gw,
                httpx.AsyncClient(verify=TLS) as http):
        await http.post(gw.events_url("warm"), json={"type": "X"})
        before = open_fds(gw.proc.pid)
        for i in range(300):
            resp = await http.post(gw.events_url(f"new-{i}"), json={"type": "X"})
            assert resp.status_code == 201, resp.text
        assert open_fds(gw.proc.pid) - before <= 3 * 20 + 10
        assert (tmp_path / "state" / "sessions" / "new-0" / LOG_NAME).exists()


@pytest.mark.server
async def test_readiness_is_false_when_descriptors_run_out(tmp_path: Path) -> None:
    async with spawn_gateway(tmp_path / "state") as gw, httpx.AsyncClient(verify=TLS) as http:
        assert (await http.get(f"{gw.base}/readyz")).status_code == 200
        _, hard = resource.prlimit(gw.proc.pid, resource.RLIMIT_NOFILE)
        resource.prlimit(gw.proc.pid, resource.RLIMIT_NOFILE, (open_fds(gw.proc.pid) + 1, hard))
        resp = await http.get(f"{gw.base}/readyz")  # this connection takes the last descriptor
        assert resp.status_code == 503
        assert any("descriptors" in p for p in resp.json()["problems"]), resp.text


@pytest.mark.unit
def test_a_repeated_error_is_logged_once_per_window_then_counted() -> None:
    now = [0.0]
    limiter = RepeatLimiter(window=10, clock=lambda: now[0])

    def record(msg: str, level: int = logging.ERROR) -> logging.LogRecord:
        return logging.LogRecord("asyncio", level, __file__, 1, msg, (), (OSError, OSError(24, "EMFILE"), None))

    assert limiter.filter(record("socket.accept() out of system resource"))
    assert not any(limiter.filter(record("socket.accept() out of system resource")) for _ in range(500))
    assert limiter.filter(record("another error"))  # a different message is its own line
    assert limiter.filter(record("a warning", logging.WARNING)) and limiter.filter(record("a warning", logging.WARNING))
    now[0] = 11
    again = record("socket.accept() out of system resource")
    assert limiter.filter(again) and "500 identical lines held back" in again.getMessage()
