"""The gateway and nginx + Nchan under the same live scenarios, in the same run.

    python bench/peers.py [--followers 1000] [--rate 200] [--seconds 10] [--publishers 8] [--rounds 3]
                          [--idle 10000] [--out docs/benchmarks.md] [--plot docs/fanout-latency.svg]

Fan-out: the scenario of bench/fanout.py (`--followers` WebSocket followers of one session, a
publisher paced at `--rate` events/s over `--publishers` keep-alive connections), gateway and
Nchan alternating for `--rounds`. Idle: `--idle` followers over 100 sessions (channels), caught
up, then the server's RSS growth per connection.

Nchan comes from Debian (`apt-get install -y nginx libnginx-mod-nchan`); this script installs
nothing, and says what is missing. nginx runs one worker, as the gateway runs one process.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import httpx
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CLIENT_PROCESSES, DATA, Server, available, collect, report, run_clients, start
from fanout import add_arguments, run

IDLE_SESSIONS = 100


def idle(server: Server, followers: int) -> dict[str, float]:
    sessions = [f"idle{i}" for i in range(IDLE_SESSIONS)]
    if server.name == "gateway":
        event = orjson.dumps({"type": "TEXT_MESSAGE_CONTENT", "messageId": "m", "delta": "x" * 100})
        for s in sessions:
            httpx.post(server.pub_url(s), content=b"[" + b",".join([event] * 20) + b"]",
                       headers={"content-type": "application/json"}).raise_for_status()
    time.sleep(1.0)
    before = server.rss_kib()
    pipes, procs = run_clients(server, [server.ws_path(sessions[i % IDLE_SESSIONS]) for i in range(followers)], 0)
    time.sleep(3.0)  # let the server settle: buffers freed, tasks parked
    after = server.rss_kib()
    collect(pipes, procs)
    return {"before": before, "after": after, "per": (after - before) / followers}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser, "gateway,nchan")
    parser.add_argument("--idle", type=int, default=10_000)
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # 10,000 followers: servers and clients inherit it
    names = available(args.servers.split(","))
    DATA.mkdir(parents=True, exist_ok=True)
    if args.followers:
        run(args)
    if not args.idle:
        return
    held: dict[str, dict[str, float]] = {}
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(dir=DATA) as tmp:
        for name in names:
            print(f"{name}: idle ...", file=sys.stderr)
            server = start(name, Path(tmp) / f"{name}-idle")
            try:
                held[name] = idle(server, args.idle)
            finally:
                server.stop()
    rows = [[name, f"{r['before'] / 1024:.0f}", f"{r['after'] / 1024:.0f}", f"{r['per']:.1f}"]
            for name, r in held.items()]
    intro = (f"{args.idle} idle WebSocket followers over {IDLE_SESSIONS} sessions (channels) in {CLIENT_PROCESSES} "
             f"client processes, each caught up, then the server's RSS; load average {load:.1f} when it began. "
             f"nginx + Nchan from Debian, one worker. `python bench/peers.py --followers 0 --idle {args.idle}`.")
    report(args.out, "Idle followers against nginx + Nchan (bench/peers.py)", intro,
           ["server", "RSS before (MiB)", "RSS with followers (MiB)", "KiB RSS per connection"], rows)


if __name__ == "__main__":
    main()
