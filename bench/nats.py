"""Replay and resume from NATS JetStream (`GATEWAY_STORE=nats`) against the file store, in the same run.

    python bench/nats.py [--mb 50] [--single 20000] [--rounds 3] [--out docs/benchmarks.md]

Two gateway processes, one per store, get the same events through their HTTP API: a bulk-written
session (appends of about 512 KiB, the realistic log of bench/replay.py) and a session written one
event per append. Each is then replayed over WebSocket (`follow=0`) from each store, alternating
rounds, medians reported; and resumed from random cursors (time to the first event).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA, dataset, free_port, report, wait_port
from replay import make_log, read_stream
from resume import first_event

NDJSON = {"content-type": "application/x-ndjson"}


def nats_server(root: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    conf = root / "nats.conf"
    conf.write_text(f'listen: "127.0.0.1:{port}"\nmax_payload: 8MB\njetstream {{ store_dir: "{root / "js"}" }}\n')
    binary = str(Path(sys.executable).with_name("nats-server"))
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port, proc)
    return proc, f"nats://127.0.0.1:{port}"


def gateway(state: Path, **env: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    full = {**os.environ, "GATEWAY_STATE_DIR": str(state), "GATEWAY_PORT": str(port),
            "GATEWAY_LOG_LEVEL": "warning", "GATEWAY_FSYNC": "never", **env}
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve"], env=full)
    wait_port(port, proc)
    return proc, f"127.0.0.1:{port}"


async def load(base: str, session: str, chunks: list[bytes]) -> None:
    async with httpx.AsyncClient(timeout=600) as http:
        for chunk in chunks:
            resp = await http.post(f"http://{base}/v1/projects/bench/sessions/{session}/events", content=chunk,
                                   headers=NDJSON)
            assert resp.status_code == 201, resp.text


def bulk_chunks(path: Path, size: int = 512 * 1024) -> list[bytes]:
    chunks, current, n = [], [], 0
    with open(path, "rb") as fh:
        for line in fh:
            current.append(line)
            n += len(line)
            if n >= size:
                chunks.append(b"".join(current))
                current, n = [], 0
    if current:
        chunks.append(b"".join(current))
    return chunks


def first_lines(path: Path, n: int) -> list[bytes]:
    with open(path, "rb") as fh:
        return [line for _, line in zip(range(n), fh, strict=False)]


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=50)
    parser.add_argument("--single", type=int, default=20000, help="events of the one-event-per-append session")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--resumes", type=int, default=50)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    log = dataset(f"replay-{args.mb}mb.jsonl", lambda p: make_log(p, args.mb))
    bulk = bulk_chunks(log)
    single = first_lines(log, args.single)
    with tempfile.TemporaryDirectory(dir=DATA) as tmp:
        root = Path(tmp)
        (root / "js").mkdir()
        nproc, nurl = nats_server(root)
        procs = [nproc]
        try:
            fproc, fbase = gateway(root / "files")
            gproc, gbase = gateway(root / "nats", GATEWAY_STORE="nats", GATEWAY_NATS_URL=nurl)
            procs += [fproc, gproc]
            stores = {"files": fbase, "nats": gbase}
            for base in stores.values():
                started = time.perf_counter()
                await load(base, "bulk", bulk)
                bulk_s = time.perf_counter() - started
                started = time.perf_counter()
                await load(base, "single", single)
                single_s = time.perf_counter() - started
                print(f"{base}: bulk written in {bulk_s:.1f}s, {len(single)} single appends in {single_s:.1f}s",
                      file=sys.stderr)
            replay: dict[tuple[str, str], list[float]] = {}
            for _ in range(args.rounds):
                for session in ("bulk", "single"):
                    for name, base in stores.items():
                        url = f"ws://{base}/v1/projects/bench/sessions/{session}/events?follow=0"
                        seconds, nbytes, _ = await read_stream(url)
                        replay.setdefault((session, name), []).append(nbytes / seconds / 1e6)
            rng = random.Random(7)
            async with httpx.AsyncClient() as http:
                status = {name: (await http.get(f"http://{base}/v1/projects/bench/sessions/bulk")).json()
                          for name, base in stores.items()}
            resume: dict[str, list[float]] = {}
            for _ in range(args.resumes):
                seq = rng.randint(1, status["nats"]["events"] - 1)
                for name, base in stores.items():
                    cursor = f"{status[name]['epoch']}-{seq}"
                    url = f"ws://{base}/v1/projects/bench/sessions/bulk/events?follow=0&after={cursor}"
                    resume.setdefault(name, []).append(await first_event(url) * 1000)
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait()
    rows = []
    labels = {"bulk": f"{args.mb} MB, appends of 512 KiB", "single": f"{len(single)} events, one per append"}
    for session, label in labels.items():
        f, n = statistics.median(replay[(session, "files")]), statistics.median(replay[(session, "nats")])
        rows.append([label, f"{f:.0f}", f"{n:.0f}", f"{n / f:.2f}x"])
    def p99(name: str) -> float:
        times = sorted(resume[name])
        return times[min(len(times) - 1, int(len(times) * 0.99))]

    rows.append([f"resume from a random cursor of the {args.mb} MB session: first event, median / p99 "
                 f"of {args.resumes}",
                 f"{statistics.median(resume['files']):.1f} / {p99('files'):.1f} ms",
                 f"{statistics.median(resume['nats']):.1f} / {p99('nats'):.1f} ms", ""])
    report(args.out, "NATS JetStream store vs files",
           f"Replay over WebSocket (`follow=0`), MB/s of stored events, median of {args.rounds} alternating rounds; "
           "one nats-server (JetStream file storage) and the two gateways on this machine.",
           ["session", "files", "nats", "nats / files"], rows)


if __name__ == "__main__":
    asyncio.run(main())
