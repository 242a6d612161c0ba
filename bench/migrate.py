"""`agui-gateway migrate` on a realistic log: copy speed both ways, and replay of the migrated session
from NATS against the same session served by the file store, in the same run.

    python bench/migrate.py [--mb 50] [--rounds 3] [--out docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA, dataset, report
from replay import make_log, read_stream

HERE = Path(__file__).resolve().parent

_spec = importlib.util.spec_from_file_location("bench_nats", HERE / "nats.py")  # not the nats-py package
assert _spec is not None and _spec.loader is not None
bench_nats = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_nats)


def migrate(nats_url: str, *args: str) -> float:
    """Seconds one `agui-gateway migrate` took (it must succeed)."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "gateway", "migrate", *args], check=True, stdout=subprocess.DEVNULL,
                   env={**os.environ, "GATEWAY_NATS_URL": nats_url})
    return time.perf_counter() - started


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    log = dataset(f"replay-{args.mb}mb.jsonl", lambda p: make_log(p, args.mb))
    size = log.stat().st_size
    with tempfile.TemporaryDirectory(dir=DATA) as tmp:
        root = Path(tmp)
        (root / "js").mkdir()
        session = root / "files" / "sessions" / "bulk"
        session.mkdir(parents=True)
        (session / "meta.json").write_bytes(orjson.dumps({"project": "bench", "epoch": "benchmigr8", "createdAt": 1}))
        os.link(log, session / "agui-events.jsonl")
        nproc, nurl = bench_nats.nats_server(root)
        procs = [nproc]
        try:
            to_s = migrate(nurl, "--to", "nats", str(root / "files"))
            again_s = migrate(nurl, "--to", "nats", str(root / "files"))
            back_s = migrate(nurl, "--from", "nats", str(root / "back"))
            assert (root / "back" / "sessions" / "bulk" / "agui-events.jsonl").read_bytes() == log.read_bytes()
            fproc, fbase = bench_nats.gateway(root / "files")
            gproc, gbase = bench_nats.gateway(root / "nats", GATEWAY_STORE="nats", GATEWAY_NATS_URL=nurl)
            procs += [fproc, gproc]
            replay: dict[str, list[float]] = {}
            for _ in range(args.rounds):
                for name, base in (("files", fbase), ("nats", gbase)):
                    seconds, nbytes, _ = await read_stream(f"ws://{base}/v1/projects/bench/sessions/bulk/events?follow=0")
                    replay.setdefault(name, []).append(nbytes / seconds / 1e6)
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait()
    f, n = statistics.median(replay["files"]), statistics.median(replay["nats"])
    mb = size / 1e6
    rows = [
        [f"migrate --to nats, {mb:.0f} MB", f"{to_s:.1f} s ({mb / to_s:.0f} MB/s)"],
        ["migrate --to nats again (up to date)", f"{again_s:.1f} s"],
        [f"migrate --from nats, {mb:.0f} MB (byte-identical log)", f"{back_s:.1f} s ({mb / back_s:.0f} MB/s)"],
        ["replay of the migrated session over WebSocket, files / nats",
         f"{f:.0f} / {n:.0f} MB/s ({n / f:.2f}x)"],
    ]
    report(args.out, "Migrating a volume to NATS",
           f"`agui-gateway migrate` on one session of the realistic log (bench/replay.py), one nats-server "
           f"(JetStream file storage) on this machine; replay median of {args.rounds} alternating rounds.",
           ["what", "result"], rows)


if __name__ == "__main__":
    asyncio.run(main())
