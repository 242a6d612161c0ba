"""The background builder of compact caches on a real gateway: runs appended through it are in
the cache before anyone opens the compact view, existing sessions get theirs when listed or
opened raw, and a gateway killed in the middle of a build leaves a cache that is finished right.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import anyio
import httpx
import orjson
import pytest

from gateway.store.layout import LOG_NAME, write_meta
from gateway.stream.background import BuildError, BuildProcess
from gateway.stream.sidecar import SIDECAR_NAME, Sidecar, read_records
from tests.conftest import TLS, RunningGateway, spawn_gateway
from tests.test_compact_view import nd, post_lines
from tests.test_sidecar import run
from tests.test_warm import reference

pytestmark = [pytest.mark.anyio, pytest.mark.server]
STORES = ("files", "nats")


def sidecar_of(gw: RunningGateway | Path, session: str = "s") -> Path:
    state = gw if isinstance(gw, Path) else gw.settings.state_dir
    if not isinstance(gw, Path) and gw.settings.store == "nats":
        return state / "nats-cache" / session / SIDECAR_NAME
    return state / "sessions" / session / SIDECAR_NAME


def covered(path: Path, epoch: str, lines: list[bytes]) -> int:
    """The last seq the sidecar's whole records cover for this log (0: none)."""
    if not path.exists():
        return 0
    fd = os.open(path, os.O_RDONLY)
    try:
        records, _ = read_records(fd, epoch, len(lines), sum(len(x) + 1 for x in lines))
    finally:
        os.close(fd)
    return records[-1].last if records else 0


async def until_covered(path: Path, epoch: str, lines: list[bytes]) -> None:
    last_end = max(i for i, line in enumerate(lines, 1) if b"RUN_FINISHED" in line)
    with anyio.fail_after(60):
        while covered(path, epoch, lines) != last_end:
            await anyio.sleep(0.02)


def children(pid: int) -> list[int]:
    return [int(c) for task in Path(f"/proc/{pid}/task").iterdir()
            for c in (task / "children").read_text().split()]


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def compact_events(rows: list[dict[str, Any]]) -> list[tuple[int, bytes]]:
    return [(row["seq"], orjson.dumps(row["event"])) for row in rows if "event" in row]


async def test_finished_runs_are_cached_before_the_first_compact_open(gw: RunningGateway) -> None:
    lines: list[bytes] = []
    for r in range(6):
        more = run(r, messages=2, words=60)
        await post_lines(gw, "s", more)
        lines += more
    tail = run(6, words=10, finished=False)
    resp = await gw.http.post(gw.events_url("s"), content=b"\n".join(tail),
                              headers={"content-type": "application/x-ndjson"})
    epoch = resp.json()["last"].split("-")[0]  # nothing opened the session's log: only appends
    path = sidecar_of(gw)
    await until_covered(path, epoch, lines + tail)
    before = (path.read_bytes(), path.stat().st_mtime_ns)
    got = compact_events(await nd(gw, "s", "?view=compact"))
    assert (path.read_bytes(), path.stat().st_mtime_ns) == before  # the stream built nothing
    finished = reference(lines)
    assert got[: len(finished)] == finished
    assert [seq for seq, _ in got[len(finished):]] == list(range(len(lines) + 1, len(lines) + len(tail) + 1))


async def test_without_the_builder_the_first_compact_open_builds(gateway_factory: Any) -> None:
    async with gateway_factory(compact_share=0) as gw:
        await post_lines(gw, "s", run(0, words=50))
        await nd(gw, "s")
        await anyio.sleep(0.2)
        assert not sidecar_of(gw).exists()
        assert compact_events(await nd(gw, "s", "?view=compact")) == reference(run(0, words=50))
        assert sidecar_of(gw).exists()


def write_session(state: Path, name: str, lines: list[bytes], epoch: str = "e0e0e0e") -> None:
    folder = state / "sessions" / name
    folder.mkdir(parents=True)
    write_meta(folder, {"project": "p", "epoch": epoch, "createdAt": 1})
    (folder / LOG_NAME).write_bytes(b"".join(x + b"\n" for x in lines))


@pytest.mark.files_only
async def test_existing_sessions_are_built_when_listed_or_opened_raw(gateway_factory: Any, tmp_path: Path) -> None:
    state = tmp_path / "state"
    lines = [x for r in range(5) for x in run(r, words=80)]
    for name in ("listed", "opened"):
        write_session(state, name, lines)
    async with gateway_factory(state_dir=state) as gw:
        assert (await gw.http.get(f"{gw.base}/v1/projects/p/sessions?search=listed")).status_code == 200
        await until_covered(sidecar_of(state, "listed"), "e0e0e0e", lines)
        assert not sidecar_of(state, "opened").exists()
        assert len(await nd(gw, "opened")) == len(lines)
        await until_covered(sidecar_of(state, "opened"), "e0e0e0e", lines)
        assert "listed" not in gw.gateway.store.logs  # opened for the build, then let go


@pytest.mark.files_only
async def test_a_gateway_killed_while_building_leaves_a_cache_finished_right(tmp_path: Path) -> None:
    state = tmp_path / "state"
    lines = [x for r in range(120) for x in run(r, messages=4, words=150)]
    path = state / "sessions" / "s" / SIDECAR_NAME
    async with (spawn_gateway(state, GATEWAY_COMPACT_SHARE="0.02") as gp,
                httpx.AsyncClient(verify=TLS, timeout=60) as http):
        resp = await http.post(gp.events_url("s"), content=b"\n".join(lines),
                               headers={"content-type": "application/x-ndjson"})
        assert resp.status_code == 201, resp.text
        epoch = resp.json()["last"].split("-")[0]
        with anyio.fail_after(60):
            while covered(path, epoch, lines) < len(lines) // 10:
                await anyio.sleep(0.01)
        builders = children(gp.proc.pid)
        assert builders, "the build runs in a child process"
        gp.proc.send_signal(signal.SIGKILL)
        await anyio.to_thread.run_sync(gp.proc.wait)
        with anyio.fail_after(10):
            while any(alive(pid) for pid in builders):  # it dies with the gateway
                await anyio.sleep(0.01)
    assert 0 < covered(path, epoch, lines) < len(lines)  # killed in the middle of the build
    with open(path, "ab") as fh:
        fh.write(b"E 1 2 3 4 5 6 7\n" + b"x" * 100)  # and a torn record after it
    async with spawn_gateway(state) as gp, httpx.AsyncClient(verify=TLS, timeout=60) as http:
        assert (await http.get(f"{gp.base}/v1/projects/p/sessions")).status_code == 200
        await until_covered(path, epoch, lines)
        resp = await http.get(gp.events_url("s") + "?view=compact", headers={"accept": "application/x-ndjson"})
        got = compact_events([orjson.loads(x) for x in resp.content.splitlines()])
    assert got == reference(lines)


async def test_a_failed_build_is_reported_and_the_next_one_runs(tmp_path: Path) -> None:
    process = BuildProcess(share=1)
    try:
        with pytest.raises(BuildError, match="No such file"):
            await process(Sidecar(tmp_path / "gone", LOG_NAME), "e0e0e0e", 1, 10, {}, None)
        write_session(tmp_path, "s", run(0, words=5))
        await process(Sidecar(tmp_path / "sessions" / "s", LOG_NAME), "e0e0e0e", len(run(0, words=5)),
                      sum(len(x) + 1 for x in run(0, words=5)), {}, None)
        assert covered(tmp_path / "sessions" / "s" / SIDECAR_NAME, "e0e0e0e", run(0, words=5)) == len(run(0, words=5))
    finally:
        await process.aclose()
