"""Connection storm: what opening a follower costs the server, against nginx + Nchan.

    python bench/storm.py [--sessions 200] [--followers 2] [--events 60] [--rounds 3]
                          [--servers gateway,nchan] [--out docs/benchmarks.md]

A restart or a deploy reconnects every open tab at once. Here S sessions hold `--events` events
each (the gateway's appended in one POST per session; Nchan's published one POST each to a
channel that keeps the last 50), then S x F WebSocket followers connect, in bench/wsload.py's
four client processes, each asking for the last 50 (`?tail=50`; an Nchan subscriber gets its
channel's buffer) and, on the gateway, reading to `live`. Measured per round: the server's
CPU-seconds from the first connection to one second after the last one is ready, less its idle
CPU over as long (timers, heartbeats), per follower opened; and the storm's wall time. Rounds
alternate the servers; the table gives medians and the ratio to Nchan's CPU per open.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Server, available, collect, report, run_clients, start

TAIL = 50
PROJECT = "bench"


def tick(n: int) -> dict[str, object]:
    return {"type": "CUSTOM", "name": "tick", "value": {"n": n, "t": 0.0, "delta": "token "}}


async def fill(server: Server, sessions: list[str], events: int) -> None:
    """Give every session its events before the storm."""
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}", timeout=60) as http:
        if server.name == "gateway":
            for s in sessions:
                r = await http.post(f"/v1/projects/{PROJECT}/sessions/{s}/events",
                                    content=orjson.dumps([tick(n) for n in range(events)]),
                                    headers={"content-type": "application/json"})
                r.raise_for_status()
            return

        async def channel(s: str) -> None:
            for n in range(events):
                (await http.post(f"/pub50/{s}", content=orjson.dumps(tick(n)))).raise_for_status()

        await asyncio.gather(*(channel(s) for s in sessions))


def follower_paths(server: Server, sessions: list[str], followers: int) -> list[str]:
    one = (lambda s: f"/v1/projects/{PROJECT}/sessions/{s}/events?tail={TAIL}") if server.name == "gateway" \
        else (lambda s: f"/sub/{s}")
    return [one(s) for s in sessions for _ in range(followers)]


def idle_cpu(server: Server, seconds: float) -> float:
    """The server's CPU-seconds per second while nobody asks anything of it."""
    cpu0, t0 = server.cpu_seconds(), time.monotonic()
    time.sleep(seconds)
    return (server.cpu_seconds() - cpu0) / (time.monotonic() - t0)


def storm(name: str, sessions: int, followers: int, events: int) -> tuple[float, float]:
    """(server CPU per open in us, wall seconds of the storm) for one round."""
    with tempfile.TemporaryDirectory() as tmp:
        server = start(name, Path(tmp))
        try:
            names = [f"s{i}" for i in range(sessions)]
            asyncio.run(fill(server, names, events))
            idle = idle_cpu(server, 2.0)
            paths = follower_paths(server, names, followers)
            cpu0, t0 = server.cpu_seconds(), time.monotonic()
            pipes, procs = run_clients(server, paths, 0)
            wall = time.monotonic() - t0
            time.sleep(1.0)  # replays sent after the handshake (Nchan) are the open's too
            spent = server.cpu_seconds() - cpu0 - idle * (time.monotonic() - t0)
            collect(pipes, procs)
        finally:
            server.stop()
    return spent / len(paths) * 1e6, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=200)
    parser.add_argument("--followers", type=int, default=2)
    parser.add_argument("--events", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--servers", default="gateway,nchan")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    servers = available(args.servers.split(","))
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in servers}
    for r in range(args.rounds):
        for name in servers:
            per_open, wall = storm(name, args.sessions, args.followers, args.events)
            print(f"round {r + 1}: {name}: {per_open:.0f} us of server CPU per open, storm {wall:.2f} s")
            results[name].append((per_open, wall))
    nchan = statistics.median(c for c, _ in results["nchan"]) if results.get("nchan") else None
    rows = []
    for name, rs in results.items():
        per_open = statistics.median(c for c, _ in rs)
        wall = statistics.median(w for _, w in rs)
        opens = args.sessions * args.followers
        rows.append([name, f"{opens:,}", f"{per_open:.0f}", f"{min(c for c, _ in rs):.0f}-{max(c for c, _ in rs):.0f}",
                     f"{wall:.2f}", f"{opens / wall:,.0f}", f"{per_open / nchan:.1f}x" if nchan else "-"])
    intro = (f"{args.sessions} sessions of {args.events} events, {args.followers} WebSocket followers each, all "
             f"connecting at once from 4 client processes (each asks for the last {TAIL}; the gateway's read to "
             f"`live`); {args.rounds} round(s) alternating the servers, medians. Server CPU from the first "
             "connection to a second after the last one is ready, less its idle CPU, per follower. 2 cores "
             "shared by the server and the clients. "
             f"`python bench/storm.py --sessions {args.sessions} --followers {args.followers} "
             f"--events {args.events} --rounds {args.rounds}`.")
    report(args.out, "Connection storm (bench/storm.py)", intro,
           ["server", "followers opened", "server CPU per open (us)", "range over rounds (us)", "storm (s)",
            "opens/s", "CPU per open vs nchan"], rows)


if __name__ == "__main__":
    main()
