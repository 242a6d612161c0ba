"""Durable Streams: catch-up reads and live SSE fan-out, the gateway against the Node reference server.

    python bench/durable.py [--messages 200000] [--followers 200] [--rate 100] [--seconds 10]
                            [--rounds 3] [--out docs/benchmarks.md]

Servers, alternating round by round (medians of the rounds): the gateway (`agui-gateway serve`,
file store, the caller's GATEWAY_* settings, GATEWAY_FSYNC=always by default) and the reference
server `@durable-streams/server` 0.3.7 in node, file-backed (`dataDir`) and in memory. The
reference is installed with npm into `.cache/bench-node/` the first time.

- Catch-up: a JSON stream of `--messages` messages of about 160 bytes, appended in batches of 1000,
  read from `-1` by one client following `Stream-Next-Offset` until `Stream-Up-To-Date`. The
  gateway also serves the same events as an AG-UI session (`sessions/<s>`).
- Fan-out: `--followers` SSE readers of one JSON stream (`live=sse`, in 2 client processes that
  parse the SSE and the JSON), a publisher POSTing one message per request at `--rate` for
  `--seconds`; latency runs from just before a message's POST to its arrival at each follower
  (one monotonic clock for every process of the machine). Reported: latency percentiles,
  messages lost or delivered twice, the server's CPU seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA, Server, free_port, percentile, report, wait_port

NODE_DIR = Path(__file__).resolve().parent.parent / ".cache" / "bench-node"
REFERENCE = "@durable-streams/server@0.3.7"
REFERENCE_JS = """
import { DurableStreamTestServer } from "@durable-streams/server"
const [port, dir] = process.argv.slice(2)
const server = new DurableStreamTestServer({ port: Number(port), host: "127.0.0.1", ...(dir ? { dataDir: dir } : {}) })
await server.start()
"""
PAD = "x" * 120
CLIENT_PROCESSES = 2


def reference_installed() -> Path:
    script = NODE_DIR / "reference.mjs"
    if not (NODE_DIR / "node_modules" / "@durable-streams" / "server").exists():
        NODE_DIR.mkdir(parents=True, exist_ok=True)
        npm = shutil.which("npm")
        if npm is None:
            raise SystemExit("npm is needed for the reference server")
        subprocess.run([npm, "install", "--no-audit", "--no-fund", "--loglevel=error", REFERENCE], cwd=NODE_DIR,
                       check=True)
    script.write_text(REFERENCE_JS)
    return script


def start(name: str, workdir: Path) -> tuple[Server, str]:
    """The server, and what goes before /v1/stream/<path> on it."""
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    if name == "gateway":
        env = {"GATEWAY_LOG_LEVEL": "warning", **os.environ, "GATEWAY_STATE_DIR": str(workdir / "state"),
               "GATEWAY_PORT": str(port)}
        proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve"], env=env)
        base = f"http://127.0.0.1:{port}/ds/bench"
    else:
        data = str(workdir / "reference") if name == "reference-files" else ""
        proc = subprocess.Popen(["node", str(reference_installed()), str(port), data], cwd=NODE_DIR)
        base = f"http://127.0.0.1:{port}"
    wait_port(port, proc)
    return Server(name, proc, port, None), base


def message(n: int) -> dict[str, object]:
    return {"n": n, "t": time.monotonic_ns(), "pad": PAD}


def fill(http: httpx.Client, url: str, messages: int, session: bool = False) -> None:
    for first in range(0, messages, 1000):
        batch = [{"type": "CUSTOM", **message(n)} if session else message(n)
                 for n in range(first, min(messages, first + 1000))]
        resp = http.post(url, json=batch)
        assert resp.status_code in (200, 201, 204), resp.text


def catch_up(http: httpx.Client, url: str) -> tuple[float, int, int]:
    """Seconds, bytes and answers of one whole read from -1 (the bodies are not parsed: the client
    costs little, and each server's JSON is checked once, after the clock stopped)."""
    offset, size, answers, last = "-1", 0, 0, b""
    started = time.perf_counter()
    while True:
        resp = http.get(url, params={"offset": offset})
        size, answers, last = size + len(resp.content), answers + 1, resp.content
        offset = resp.headers["stream-next-offset"]
        if resp.headers.get("stream-up-to-date") == "true":
            elapsed = time.perf_counter() - started
            assert json.loads(last), "the last answer holds messages"
            return elapsed, size, answers


async def follow(host: str, port: int, path: str, expect: int, ready: asyncio.Event,
                 latencies: list[float], seen: dict[int, int]) -> None:
    """One SSE follower: HTTP/1.1 by hand (chunked body, SSE events), so the client costs little."""
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n".encode())
    await reader.readuntil(b"\r\n\r\n")
    buffer = b""
    while sum(seen.values()) < expect:
        size = int((await reader.readline()).strip(), 16)
        if size == 0:
            break
        buffer += (await reader.readexactly(size + 2))[:-2]
        *events, buffer = buffer.split(b"\n\n")
        now = time.monotonic_ns()
        for event in events:
            if event.startswith(b"event: control"):
                ready.set()
                continue
            data = b"".join(line[5:] for line in event.split(b"\n") if line.startswith(b"data:"))
            for item in json.loads(data):
                seen[item["n"]] = seen.get(item["n"], 0) + 1
                latencies.append((now - item["t"]) / 1e6)
    writer.close()


def client_process(host: str, port: int, path: str, followers: int, expect: int, pipe: Connection) -> None:
    async def run() -> None:
        readies = [asyncio.Event() for _ in range(followers)]
        latencies: list[float] = []
        seens: list[dict[int, int]] = [{} for _ in range(followers)]
        tasks = [asyncio.create_task(follow(host, port, path, expect, r, latencies, s))
                 for r, s in zip(readies, seens, strict=True)]
        await asyncio.gather(*(r.wait() for r in readies))
        pipe.send("ready")
        await asyncio.wait(tasks, timeout=120)
        lost = sum(expect - len(s) for s in seens)
        dup = sum(sum(s.values()) - len(s) for s in seens)
        pipe.send((latencies, lost, dup))

    asyncio.run(run())


def fanout(server: Server, base: str, followers: int, rate: float, seconds: float) -> dict[str, float]:
    url = f"{base}/v1/stream/fanout"
    http = httpx.Client(timeout=60)
    http.put(url, headers={"content-type": "application/json"})
    tail = http.head(url).headers["stream-next-offset"]
    parsed = httpx.URL(url)
    path = f"{parsed.raw_path.decode()}?offset={tail}&live=sse"
    expect = int(rate * seconds)
    ctx = multiprocessing.get_context("fork")
    pipes, procs = [], []
    for i in range(CLIENT_PROCESSES):
        mine, theirs = ctx.Pipe()
        share = followers // CLIENT_PROCESSES + (1 if i < followers % CLIENT_PROCESSES else 0)
        proc = ctx.Process(target=client_process, args=(parsed.host, parsed.port, path, share, expect, theirs))
        proc.start()
        pipes.append(mine)
        procs.append(proc)
    for pipe in pipes:
        assert pipe.recv() == "ready"
    cpu = server.cpu_seconds()
    started = time.monotonic()
    for n in range(expect):
        due = started + n / rate
        if (wait := due - time.monotonic()) > 0:
            time.sleep(wait)
        http.post(url, json=[message(n)])
    latencies: list[float] = []
    lost = dup = 0
    for pipe, proc in zip(pipes, procs, strict=True):
        got, one_lost, one_dup = pipe.recv()
        latencies += got
        lost, dup = lost + one_lost, dup + one_dup
        proc.join()
    latencies.sort()
    return {"p50": percentile(latencies, 0.5), "p99": percentile(latencies, 0.99), "lost": lost, "dup": dup,
            "cpu": server.cpu_seconds() - cpu}


def run(args: argparse.Namespace) -> None:
    names = ["gateway", "reference-files", "reference-memory"]
    reads: dict[str, list[tuple[float, int, int]]] = {n: [] for n in [*names, "gateway-session"]}
    fans: dict[str, list[dict[str, float]]] = {n: [] for n in names}
    with tempfile.TemporaryDirectory(dir=DATA if DATA.exists() else None) as tmp:
        for i in range(args.rounds):
            for name in names:
                print(f"round {i + 1}: {name} ...", file=sys.stderr)
                server, base = start(name, Path(tmp) / f"{name}-{i}")
                try:
                    http = httpx.Client(timeout=120)
                    url = f"{base}/v1/stream/catchup"
                    http.put(url, headers={"content-type": "application/json"})
                    fill(http, url, args.messages)
                    reads[name].append(catch_up(http, url))
                    if name == "gateway":
                        session = f"{base}/v1/stream/sessions/catchup"
                        http.put(session, headers={"content-type": "application/json"})
                        fill(http, session, args.messages, session=True)
                        reads["gateway-session"].append(catch_up(http, session))
                    fans[name].append(fanout(server, base, args.followers, args.rate, args.seconds))
                finally:
                    server.stop()
    rows = []
    for name, runs in reads.items():
        seconds = statistics.median(r[0] for r in runs)
        size, answers = runs[0][1], runs[0][2]
        rows.append([name, f"{answers}", f"{size / 1e6:.1f} MB", f"{seconds * 1000:.0f} ms",
                     f"{size / seconds / 1e6:.0f} MB/s", f"{args.messages / seconds / 1e3:.0f} k/s"])
    report(args.out, "Durable Streams: catch-up read",
           f"One client reads a JSON stream of {args.messages} messages from `-1`, following "
           "`Stream-Next-Offset` (`python bench/durable.py`; medians of the rounds).",
           ["server", "answers", "body", "read", "bytes/s", "messages/s"], rows)
    rows = [[name, f"{statistics.median(r['p50'] for r in runs):.1f} ms",
             f"{statistics.median(r['p99'] for r in runs):.1f} ms",
             f"{max(r['lost'] for r in runs):.0f}", f"{max(r['dup'] for r in runs):.0f}",
             f"{statistics.median(r['cpu'] for r in runs):.2f} s"] for name, runs in fans.items()]
    report(args.out, "Durable Streams: live SSE fan-out",
           f"{args.followers} SSE followers of one JSON stream, one message per POST at {args.rate:g}/s for "
           f"{args.seconds:g} s (`python bench/durable.py`; medians of the rounds, lost and dup the worst).",
           ["server", "p50", "p99", "lost", "dup", "server CPU"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--followers", type=int, default=200)
    parser.add_argument("--rate", type=float, default=100)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path)
    run(parser.parse_args())


if __name__ == "__main__":
    main()
