"""A full disk: 507, nothing of the failed append on disk, and appends resume once there is room.

The disk is a real one: a 1 MiB tmpfs mounted for the test (the tests run as root, as CI does).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import run_gateway
from tests.streamclient import ws_read_all

pytestmark = [pytest.mark.anyio, pytest.mark.server]


@contextlib.contextmanager
def small_disk(path: Path, size: str) -> Iterator[Path]:
    path.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (CI runs as root)")
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


async def test_disk_full_is_507_and_writes_nothing(tmp_path: Path) -> None:
    with small_disk(tmp_path / "disk", "1m") as disk:
        filler = disk / "filler"
        filler.write_bytes(b"f" * 300_000)  # someone else's data, freed later
        async with run_gateway(disk / "state", fsync="always") as gw:
            log_path = disk / "state" / "sessions" / "s" / "agui-events.jsonl"
            acked = 0
            pad = "x" * 3000
            while True:
                batch = [{"type": "X", "n": acked + i, "pad": pad} for i in range(10)]
                resp = await gw.http.post(gw.events_url("s"), json=batch)
                if resp.status_code != 201:
                    break
                acked += 10
            assert resp.status_code == 507 and resp.json()["error"]["code"] == "disk_full"
            assert "nothing was written" in resp.json()["error"]["message"]
            data = log_path.read_bytes()
            assert data.count(b"\n") == acked and data.endswith(b"\n")  # no part of the failed append

            filler.unlink()  # room again: appends go on where they stopped
            resp = await gw.http.post(gw.events_url("s"), json=[{"type": "X", "n": acked}])
            assert resp.status_code == 201 and resp.json()["first"].endswith(f"-{acked + 1}")
            seen, code, _ = await ws_read_all(gw.events_url("s", ws=True) + "?follow=0")
            assert code == 1000 and [e["n"] for e in seen.events] == list(range(acked + 1))
