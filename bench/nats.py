"""Replay and resume from NATS JetStream (`GATEWAY_STORE=nats`) against the file store, in the same run.

    python bench/nats.py [--mb 50] [--single 20000] [--rounds 3] [--resumes 200] [--writers 16] [--out FILE]

Two gateway processes, one per store, get the same events through their HTTP API: a bulk-written
session (appends of about 512 KiB, the realistic log of bench/replay.py) and a session written one
event per append. Once the NATS gateway has compacted both (it does so on its own once appends
pause), each is replayed over WebSocket (`follow=0`) from each store, alternating rounds, medians
reported; and resumed from random cursors (time to the first event), on NATS through a second
gateway started after the writes (a replica that has read nothing of the sessions). Last, append
throughput: one writer, then `--writers` concurrent writers, one event per request to one session
(on NATS, concurrent appends are group-committed: one message and one ack for those that wait).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import orjson

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


def nats_client() -> Any:
    """The `nats` package, not this script (whose folder is first on sys.path)."""
    here = Path(__file__).resolve().parent
    path, sys.path[:] = sys.path[:], [p for p in sys.path if Path(p or ".").resolve() != here]
    try:
        return importlib.import_module("nats")
    finally:
        sys.path[:] = path


async def compacted(url: str, sessions: list[str], stream: str = "AGUI") -> float:
    """Wait until compaction left only the live edge on each session's own subject; seconds waited."""
    started = time.perf_counter()
    nc = await nats_client().connect(url)
    try:
        while True:
            counts = []
            for session in sessions:
                request = orjson.dumps({"subjects_filter": f"{stream}.e.{session}"})
                info = orjson.loads((await nc.request(f"$JS.API.STREAM.INFO.{stream}", request, timeout=10)).data)
                counts.append(sum((info["state"].get("subjects") or {}).values()))
            if all(n <= 1 for n in counts):
                return time.perf_counter() - started
            await asyncio.sleep(0.5)
    finally:
        await nc.close()


async def append_rate(base: str, session: str, writers: int, seconds: float) -> float:
    """Acknowledged appends per second, `writers` clients appending one event per request to one session."""
    url = f"http://{base}/v1/projects/bench/sessions/{session}/events"
    deadline = time.perf_counter() + seconds
    done = 0
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=writers)) as http:
        async def writer(w: int) -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                line = orjson.dumps({"type": "CUSTOM", "name": "w", "value": {"writer": w, "n": done}})
                resp = await http.post(url, content=line, headers=NDJSON)
                assert resp.status_code == 201, resp.text
                done += 1

        await asyncio.gather(*(writer(w) for w in range(writers)))
    return done / seconds


def p99(times: list[float]) -> float:
    ordered = sorted(times)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


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
    parser.add_argument("--resumes", type=int, default=200)
    parser.add_argument("--writers", type=int, default=16, help="concurrent appenders to one session")
    parser.add_argument("--seconds", type=float, default=5)
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
            print(f"NATS compaction done {await compacted(nurl, ['bulk', 'single']):.1f}s after the last append",
                  file=sys.stderr)
            cold, stores["nats (other replica)"] = gateway(root / "nats2", GATEWAY_STORE="nats", GATEWAY_NATS_URL=nurl)
            procs.append(cold)
            replay: dict[tuple[str, str], list[float]] = {}
            for _ in range(args.rounds):
                for session in ("bulk", "single"):
                    for name, base in list(stores.items())[:2]:
                        url = f"ws://{base}/v1/projects/bench/sessions/{session}/events?follow=0"
                        seconds, nbytes, _ = await read_stream(url)
                        replay.setdefault((session, name), []).append(nbytes / seconds / 1e6)
            rng = random.Random(7)
            resume: dict[tuple[str, str], list[float]] = {}
            for session in ("bulk", "single"):
                async with httpx.AsyncClient() as http:
                    status = {name: (await http.get(f"http://{base}/v1/projects/bench/sessions/{session}")).json()
                              for name, base in stores.items()}
                for _ in range(args.resumes):
                    seq = rng.randint(1, status["files"]["events"] - 1)
                    for name, base in stores.items():
                        cursor = f"{status[name]['epoch']}-{seq}"
                        url = f"ws://{base}/v1/projects/bench/sessions/{session}/events?follow=0&after={cursor}"
                        resume.setdefault((session, name), []).append(await first_event(url) * 1000)
            appends: dict[tuple[int, str], float] = {}
            for writers in (1, args.writers):
                for name, base in list(stores.items())[:2]:
                    appends[(writers, name)] = await append_rate(base, f"w{writers}", writers, args.seconds)
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait()
    rows = []
    labels = {"bulk": f"{args.mb} MB, appends of 512 KiB", "single": f"{len(single)} events, one per append"}
    for session, label in labels.items():
        f, n = statistics.median(replay[(session, "files")]), statistics.median(replay[(session, "nats")])
        rows.append([f"replay: {label}", f"{f:.0f} MB/s", f"{n:.0f} MB/s", f"{n / f:.2f}x", ""])
    for session, label in labels.items():
        f, n, c = (resume[(session, name)] for name in stores)
        rows.append([f"resume in the {label}: first event, median / p99 of {args.resumes}",
                     f"{statistics.median(f):.1f} / {p99(f):.1f} ms", f"{statistics.median(n):.1f} / {p99(n):.1f} ms",
                     "", f"{statistics.median(c):.1f} / {p99(c):.1f} ms"])
    for writers in (1, args.writers):
        f, n = appends[(writers, "files")], appends[(writers, "nats")]
        rows.append([f"appends/s, one event per request, {writers} concurrent writer(s) on one session, "
                     f"{args.seconds:.0f} s", f"{f:.0f}", f"{n:.0f}", f"{n / f:.2f}x", ""])
    report(args.out, "NATS JetStream store vs files",
           f"Replay over WebSocket (`follow=0`), MB/s of stored events, median of {args.rounds} alternating rounds, "
           "after the NATS gateway compacted the sessions; resumes from random cursors, alternating stores. One "
           "nats-server (JetStream file storage) and the gateways on this machine.",
           ["", "files", "nats (writing replica)", "nats / files", "nats (another replica)"], rows)


if __name__ == "__main__":
    asyncio.run(main())
