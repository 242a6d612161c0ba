"""The gateway and nginx + Nchan under the same live scenarios, in the same run.

    python bench/peers.py [--followers 1000] [--rate 200] [--seconds 10] [--idle 10000] [--out docs/benchmarks.md]

Fan-out: `--followers` WebSocket followers of one session (one Nchan channel) in 4 client
processes (bench/wsload.py), and one publisher POSTing one event per request at `--rate` events/s
for `--seconds`. Reported: the rate the publisher kept, latency from just before the POST to the
arrival at each follower (p50/p99), events lost or delivered twice, the server's CPU, and
deliveries per server CPU-second. Idle: `--idle` followers over 100 sessions (channels), caught
up, then the server's RSS growth per connection.

Nchan comes from Debian (`apt-get install -y nginx libnginx-mod-nchan`); this script installs
nothing, and says what is missing. nginx runs one worker, as the gateway runs one process.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from array import array
from dataclasses import dataclass
from multiprocessing import Process
from multiprocessing.connection import Connection
from pathlib import Path

import httpx
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA, free_port, report, wait_port
from wsload import client_process

NCHAN_MODULE = Path("/usr/lib/nginx/modules/ngx_nchan_module.so")
CLIENT_PROCESSES = 4
IDLE_SESSIONS = 100
NGINX_CONF = """
worker_processes 1;
worker_rlimit_nofile 19000;
daemon off;
pid {prefix}/nginx.pid;
error_log stderr warn;
load_module {module};
events {{ worker_connections 18000; }}
http {{
  access_log off;
  client_body_temp_path {prefix}/body;
  proxy_temp_path {prefix}/proxy;
  fastcgi_temp_path {prefix}/fastcgi;
  uwsgi_temp_path {prefix}/uwsgi;
  scgi_temp_path {prefix}/scgi;
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location ~ ^/pub/(\\w+)$ {{ nchan_publisher; nchan_channel_id $1; nchan_message_buffer_length 100; }}
    location ~ ^/sub/(\\w+)$ {{ nchan_subscriber websocket; nchan_channel_id $1; }}
  }}
}}
"""


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    port: int
    live_marker: bytes | None

    def ws_path(self, session: str) -> str:
        if self.name == "gateway":
            return f"/v1/projects/bench/sessions/{session}/events?tail=0"
        return f"/sub/{session}"

    def pub_url(self, session: str) -> str:
        if self.name == "gateway":
            return f"http://127.0.0.1:{self.port}/v1/projects/bench/sessions/{session}/events"
        return f"http://127.0.0.1:{self.port}/pub/{session}"

    def pids(self) -> list[int]:
        pids = [self.proc.pid]
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        if children.exists():
            pids += [int(p) for p in children.read_text().split()]
        return pids

    def cpu_seconds(self) -> float:
        total = 0
        for pid in self.pids():
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        return total / os.sysconf("SC_CLK_TCK")

    def rss_kib(self) -> int:
        total = 0
        for pid in self.pids():
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        return total

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def nchan_missing() -> str | None:
    if shutil.which("nginx") is None:
        return "nginx is not installed (apt-get install -y nginx libnginx-mod-nchan)"
    if not NCHAN_MODULE.exists():
        return f"{NCHAN_MODULE} is missing (apt-get install -y libnginx-mod-nchan)"
    return None


def start(name: str, workdir: Path) -> Server:
    port = free_port()
    if name == "gateway":
        env = {**os.environ, "GATEWAY_STATE_DIR": str(workdir / "state"), "GATEWAY_PORT": str(port),
               "GATEWAY_LOG_LEVEL": "warning", "GATEWAY_MAX_CONNECTIONS": "15000", **os.environ}
        proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve"], env=env)
        server = Server(name, proc, port, b'"control":"live"')
    else:
        prefix = workdir / "nginx"
        prefix.mkdir(parents=True, exist_ok=True)
        os.chmod(prefix, 0o777)
        conf = prefix / "nginx.conf"
        conf.write_text(NGINX_CONF.format(prefix=prefix, module=NCHAN_MODULE, port=port))
        proc = subprocess.Popen(["nginx", "-p", str(prefix), "-c", str(conf)])
        server = Server(name, proc, port, None)
    wait_port(port, proc)
    return server


def run_clients(server: Server, paths: list[str], events: int) -> tuple[list[Connection], list[Process]]:
    ctx = multiprocessing.get_context("fork")
    pipes, procs = [], []
    for i in range(CLIENT_PROCESSES):
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=client_process,
                           args=(server.port, paths[i::CLIENT_PROCESSES], server.live_marker, events, child))
        proc.start()
        pipes.append(parent)
        procs.append(proc)
    for pipe in pipes:
        if not pipe.poll(600):
            raise RuntimeError("client process did not connect its followers")
        assert pipe.recv() == "ready"
    return pipes, procs


def collect(pipes: list[Connection], procs: list[Process]) -> tuple[array, int, int]:
    latencies, lost, dup = array("d"), 0, 0
    for pipe in pipes:
        pipe.send("done")
    for pipe, proc in zip(pipes, procs, strict=True):
        raw, l_, d_, _ = pipe.recv()
        part = array("d")
        part.frombytes(raw)
        latencies.extend(part)
        lost, dup = lost + l_, dup + d_
        proc.join()
    return latencies, lost, dup


def fanout(server: Server, followers: int, rate: float, seconds: float) -> dict[str, float]:
    events = int(rate * seconds)
    session = "fanout"
    if server.name == "gateway":  # the session exists before its followers come
        httpx.post(server.pub_url(session), json={"type": "RUN_STARTED", "threadId": "t", "runId": "r"})
    pipes, procs = run_clients(server, [server.ws_path(session)] * followers, events)
    time.sleep(0.5)
    cpu0, wall0 = server.cpu_seconds(), time.monotonic()
    with httpx.Client(timeout=60) as http:
        start = time.monotonic()
        for n in range(events):
            ahead = start + n / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
            body = b'{"type":"CUSTOM","name":"tick","value":{"n":%d,"t":%.6f}}' % (n, time.monotonic())
            resp = http.post(server.pub_url(session), content=body, headers={"content-type": "application/json"})
            assert resp.status_code in (200, 201, 202), resp.text
        took = time.monotonic() - start
    latencies, lost, dup = collect(pipes, procs)
    cpu, wall = server.cpu_seconds() - cpu0, time.monotonic() - wall0
    lat = sorted(latencies)
    return {"rate": events / took, "behind": max(0.0, took - events / rate),
            "p50": lat[len(lat) // 2] * 1000 if lat else float("nan"),
            "p90": lat[int(len(lat) * 0.9)] * 1000 if lat else float("nan"),
            "p99": lat[int(len(lat) * 0.99)] * 1000 if lat else float("nan"),
            "p999": lat[int(len(lat) * 0.999)] * 1000 if lat else float("nan"),
            "mean": statistics.fmean(lat) * 1000 if lat else float("nan"),
            "lost": lost, "dup": dup, "cpu_pct": 100 * cpu / wall, "per_cpu": len(lat) / cpu if cpu else 0.0,
            "deliveries": len(lat)}


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
    parser.add_argument("--followers", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=200)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--idle", type=int, default=10_000)
    parser.add_argument("--servers", default="gateway,nchan")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # 10,000 followers: servers and clients inherit it
    names = args.servers.split(",")
    if "nchan" in names and (missing := nchan_missing()):
        print(f"skipping nchan: {missing}", file=sys.stderr)
        names.remove("nchan")
    DATA.mkdir(parents=True, exist_ok=True)
    fan: dict[str, dict[str, float]] = {}
    held: dict[str, dict[str, float]] = {}
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(dir=DATA) as tmp:
        for name in names:
            print(f"{name}: fan-out ...", file=sys.stderr)
            server = start(name, Path(tmp) / name)
            try:
                fan[name] = fanout(server, args.followers, args.rate, args.seconds)
            finally:
                server.stop()
            if args.idle:
                print(f"{name}: idle ...", file=sys.stderr)
                server = start(name, Path(tmp) / f"{name}-idle")
                try:
                    held[name] = idle(server, args.idle)
                finally:
                    server.stop()
    rows = [[f"{args.followers} followers of one session", name, f"{r['rate']:.0f} (behind {r['behind']:.1f} s)",
             f"{r['p50']:.1f} / {r['p99']:.1f}", f"{r['lost']:.0f} / {r['dup']:.0f}", f"{r['cpu_pct']:.0f}%",
             f"{r['per_cpu'] / 1000:.0f}k"] for name, r in fan.items()]
    rows += [[f"{args.idle} idle followers, {IDLE_SESSIONS} sessions", name, "", "", "", "",
              f"{r['per']:.1f} KiB RSS per connection"] for name, r in held.items()]
    intro = (f"One publisher POSTing one event per request at {args.rate:.0f} events/s for {args.seconds:.0f} s; "
             f"followers over WebSocket in {CLIENT_PROCESSES} client processes (bench/wsload.py) on the same "
             f"2-core machine; load average {load:.1f} when the run began. nginx + Nchan from Debian, one worker.")
    report(args.out, "Live fan-out and idle followers against nginx + Nchan (bench/peers.py)", intro,
           ["scenario", "server", "events/s kept", "p50 / p99 ms", "lost / dup", "server CPU",
            "deliveries per server CPU-second"], rows)
    pct = [[name, *(f"{r[k]:.1f}" for k in ("p50", "p90", "p99", "p999", "mean"))] for name, r in fan.items()]
    report(args.out, "Fan-out latency percentiles (bench/peers.py)",
           f"Latency from POST to arrival, ms, {args.followers} followers at {args.rate:.0f} events/s.",
           ["server", "p50", "p90", "p99", "p99.9", "mean"], pct)


if __name__ == "__main__":
    main()
