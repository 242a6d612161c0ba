"""Memory per idle follower: server RSS growth with N open, caught-up WebSocket streams.

    python bench/idle.py [--followers 10000] [--out docs/benchmarks.md]

Each follower connects to one of 100 sessions, takes its (short) replay and then idles, as viewers
of quiet sessions do. Baseline, in the same run: the bare in-memory broadcaster of
`bench/fanout.py`, which holds the same connections and does nothing else.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
import websockets

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA, free_port, report, wait_port
from fanout import BROADCASTER

SESSIONS = 100


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def hold(urls: list[str], pid: int) -> tuple[int, int]:
    """RSS before and with every follower connected and caught up (KiB)."""
    before = rss_kib(pid)
    conns = []
    try:
        for url in urls:
            ws = await websockets.connect(url, compression=None, open_timeout=60)
            conns.append(ws)
            if "/v1/" in url:
                while '"control":"live"' not in str(await ws.recv()):
                    pass
        await asyncio.sleep(2.0)  # let the server settle (buffers freed, tasks parked)
        return before, rss_kib(pid)
    finally:
        await asyncio.gather(*(ws.close() for ws in conns), return_exceptions=True)


def measure(kind: str, workdir: Path, followers: int) -> tuple[int, int]:
    port = free_port()
    if kind == "broadcaster":
        script = workdir / "broadcaster.py"
        script.write_text(BROADCASTER)
        proc = subprocess.Popen([sys.executable, str(script), str(port)])
        urls = [f"ws://127.0.0.1:{port}/ws"] * followers
    else:
        env = {**os.environ, "GATEWAY_STATE_DIR": str(workdir / "state"), "GATEWAY_PORT": str(port),
               "GATEWAY_LOG_LEVEL": "warning", "GATEWAY_MAX_CONNECTIONS": str(followers + 1000)}
        proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve"], env=env)
        base = f"127.0.0.1:{port}/v1/projects/bench/sessions"
        urls = [f"ws://{base}/idle-{i % SESSIONS}/events" for i in range(followers)]
    try:
        wait_port(port, proc)
        if kind == "gateway":
            for i in range(SESSIONS):
                events = [{"type": "TEXT_MESSAGE_CONTENT", "messageId": "m", "delta": "x" * 100}] * 20
                httpx.post(f"http://{base}/idle-{i}/events", json=events).raise_for_status()
        return asyncio.run(hold(urls, proc.pid))
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--followers", type=int, default=10_000)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # one fd per follower here and in the server
    DATA.mkdir(parents=True, exist_ok=True)
    rows: list[list[str]] = []
    per: dict[str, float] = {}
    with tempfile.TemporaryDirectory(dir=DATA) as tmp:
        for kind in ("broadcaster", "gateway"):
            print(f"measuring {kind} ...", file=sys.stderr)
            before, after = measure(kind, Path(tmp), args.followers)
            per[kind] = (after - before) / args.followers
            rows.append([kind, f"{before / 1024:.0f}", f"{after / 1024:.0f}", f"{per[kind]:.1f}"])
    intro = (f"{args.followers} idle WebSocket followers ({SESSIONS} sessions for the gateway), each caught up, "
             f"then the server's RSS. The gateway uses {per['gateway'] / per['broadcaster']:.1f}x the memory per "
             "connection of a server that only holds the sockets.")
    report(args.out, "Idle followers (bench/idle.py)", intro,
           ["server", "RSS before (MiB)", "RSS with followers (MiB)", "KiB per follower"], rows)


if __name__ == "__main__":
    main()
