"""Replay throughput and server memory: agui-gateway against two baselines measured in the same run.

    python bench/replay.py [--mb 200] [--runs 2] [--out docs/benchmarks.md]

Servers (each a uvicorn subprocess on 127.0.0.1, websockets-sansio, permessage-deflate off):
- bare:    sends the log's bytes as pre-built text frames of whole lines (<= 64 KiB each), with no
           per-event work at all: the ceiling of this stack on this machine.
- gateway: agui-gateway itself, `GET .../events` over WebSocket with follow=0.
- naive:   what the gateway replaces: read the whole file, parse every line, send one event per
           frame (the platform backend's replay path).
One client (websockets, compression off) reads each stream to its end as fast as it can. Reported:
MB/s and events/s of stored event bytes, ratios against `bare`, and the server's peak RSS.
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
import textwrap
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA, batch_events, dataset, free_port, report, text_frames, wait_port

RUN_SERVER = textwrap.dedent('''
    if __name__ == "__main__":
        import uvicorn
        uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), ws="websockets-sansio",
                    ws_per_message_deflate=False, log_level="warning")
''')

SERVERS = {
    "bare": textwrap.dedent('''
        import sys
        from starlette.applications import Starlette
        from starlette.routing import WebSocketRoute
        data = open(sys.argv[1], "rb").read()
        frames, pos = [], 0
        while pos < len(data):
            cut = data.rfind(b"\\n", pos, pos + 65536)
            cut = cut if cut > pos else data.index(b"\\n", pos)
            frames.append(data[pos:cut].decode())
            pos = cut + 1
        del data
        async def ws(websocket):
            await websocket.accept()
            for frame in frames:
                await websocket.send_text(frame)
            await websocket.close(1000)
        app = Starlette(routes=[WebSocketRoute("/ws", ws)])
    ''') + RUN_SERVER,
    "naive": textwrap.dedent('''
        import sys, json
        from starlette.applications import Starlette
        from starlette.routing import WebSocketRoute
        path = sys.argv[1]
        async def ws(websocket):
            await websocket.accept()
            with open(path, "rb") as fh:
                events = [json.loads(line) for line in fh.read().splitlines()]
            for event in events:
                await websocket.send_text(json.dumps(event))
            await websocket.close(1000)
        app = Starlette(routes=[WebSocketRoute("/ws", ws)])
    ''') + RUN_SERVER,
}


def make_log(path: Path, megabytes: int) -> int:
    """A realistic AG-UI log: runs of text deltas, tool calls, the odd large snapshot."""
    rng = random.Random(42)
    target = megabytes * 1_000_000
    lines = 0
    with open(path, "wb") as fh:
        size, run = 0, 0
        while size < target:
            run += 1
            batch = [{"type": "RUN_STARTED", "threadId": "bench", "runId": f"r{run}", "timestamp": 1764000000000 + run}]
            msg = f"m{run}"
            batch.append({"type": "TEXT_MESSAGE_START", "messageId": msg, "role": "assistant"})
            for _ in range(rng.randint(20, 120)):
                words = " ".join(rng.choice(["the", "agent", "streams", "tokens", "to", "a", "viewer", "log",
                                             "cursor", "resume", "frame", "batch"]) for _ in range(rng.randint(3, 30)))
                batch.append({"type": "TEXT_MESSAGE_CONTENT", "messageId": msg, "delta": words})
            batch.append({"type": "TEXT_MESSAGE_END", "messageId": msg})
            tool = f"t{run}"
            args = orjson.dumps({"q": "x" * rng.randint(10, 400)}).decode()
            batch.append({"type": "TOOL_CALL_START", "toolCallId": tool, "toolCallName": "search",
                          "parentMessageId": msg})
            batch.append({"type": "TOOL_CALL_ARGS", "toolCallId": tool, "delta": args})
            batch.append({"type": "TOOL_CALL_END", "toolCallId": tool})
            if rng.random() < 0.1:
                batch.append({"type": "STATE_SNAPSHOT", "snapshot": {"items": ["y" * 50] * rng.randint(20, 200)}})
            batch.append({"type": "RUN_FINISHED", "threadId": "bench", "runId": f"r{run}"})
            data = b"".join(orjson.dumps(e) + b"\n" for e in batch)
            fh.write(data)
            size += len(data)
            lines += len(batch)
    return lines


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start(kind: str, log: Path, state: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    py = sys.executable
    if kind == "gateway":
        env = {**os.environ, "GATEWAY_STATE_DIR": str(state), "GATEWAY_PORT": str(port), "GATEWAY_LOG_LEVEL": "warning"}
        proc = subprocess.Popen([py, "-m", "gateway", "serve"], env=env)
        url = f"ws://127.0.0.1:{port}/v1/projects/bench/sessions/bench/events?follow=0"
    else:
        script = state.parent / f"{kind}_server.py"
        script.write_text(SERVERS[kind])
        proc = subprocess.Popen([py, str(script), str(log), str(port)])
        url = f"ws://127.0.0.1:{port}/ws"
    wait_port(port, proc)
    return proc, url


async def read_stream(url: str) -> tuple[float, int, int]:
    """Seconds, event bytes and events of one full read of the stream."""
    events = nbytes = 0
    started = time.perf_counter()
    async for frame in text_frames(url):
        if frame.startswith('{"first":'):
            events += batch_events(frame)
            nbytes += len(frame) - frame.index('"events":[') - 11  # the stored lines with their newlines
        elif not frame.startswith('{"control"'):
            events += frame.count("\n") + 1
            nbytes += len(frame) + 1
    return time.perf_counter() - started, nbytes, events


def prepare(kind: str, log: Path, workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    state = workdir / f"state-{kind}"
    if kind == "gateway":
        session = state / "sessions" / "bench"
        session.mkdir(parents=True, exist_ok=True)
        os.link(log, session / "agui-events.jsonl")
    else:
        state.mkdir(parents=True, exist_ok=True)
    proc, url = start(kind, log, state)
    asyncio.run(read_stream(url))  # warm-up; for the gateway, the first open also indexes the log
    return proc, url


def measure(kinds: list[str], log: Path, workdir: Path, runs: int) -> dict[str, dict[str, float]]:
    """Timed reads, alternating between the servers, so a slow spell of the machine hits all of
    them alike: each round gives one ratio per server, and the median ratio is reported."""
    servers = {kind: prepare(kind, log, workdir) for kind in kinds}
    try:
        rounds: list[dict[str, tuple[float, int, int]]] = []
        for _ in range(runs):
            rounds.append({kind: asyncio.run(read_stream(url)) for kind, (_, url) in servers.items()})
        results = {}
        for kind, (proc, _) in servers.items():
            best_s, nbytes, events = min(r[kind] for r in rounds)
            ratios = [(r["bare"][0] / r[kind][0]) for r in rounds]
            results[kind] = {"mb_s": nbytes / best_s / 1e6, "events_s": events / best_s, "events": events,
                             "ratio": statistics.median(ratios), "ratio_min": min(ratios),
                             "ratio_max": max(ratios), "rss_mib": peak_rss_mib(proc.pid)}
        return results
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=int, default=200, help="log size in MB")
    parser.add_argument("--runs", type=int, default=5, help="rounds of timed reads (one read per server each)")
    parser.add_argument("--skip-naive", action="store_true", help="skip the load-everything baseline")
    parser.add_argument("--out", type=Path, help="write the results as markdown here")
    args = parser.parse_args()

    log = dataset(f"replay-{args.mb}mb.jsonl", lambda path: make_log(path, args.mb))
    size_mb = log.stat().st_size / 1e6
    with tempfile.TemporaryDirectory(dir=DATA) as tmp:
        print("measuring bare and gateway ...", file=sys.stderr)
        results = measure(["bare", "gateway"], log, Path(tmp), args.runs)
        if not args.skip_naive:
            print("measuring naive ...", file=sys.stderr)
            naive = measure(["bare", "naive"], log, Path(tmp) / "n", 1)["naive"]
            results["naive"] = naive
    rows = []
    for kind, r in results.items():
        spread = f" ({r['ratio_min']:.2f}-{r['ratio_max']:.2f})" if r["ratio_min"] != r["ratio_max"] else ""
        rows.append([kind, f"{r['mb_s']:.0f}", f"{r['events_s'] / 1e3:.0f} k", f"{r['ratio']:.2f}{spread}",
                     f"{r['rss_mib']:.0f}"])
    intro = (f"Replay of a {size_mb:.0f} MB log ({results['gateway']['events']:.0f} events) to one WebSocket "
             f"client, {args.runs} rounds alternating between the servers (best MB/s; median ratio of the rounds, "
             f"range in brackets), {os.cpu_count()} cores, client and server on the same machine.")
    report(args.out, "Replay throughput (bench/replay.py)", intro,
           ["server", "MB/s", "events/s", "ratio to bare", "server peak RSS (MiB)"], rows)


if __name__ == "__main__":
    main()
